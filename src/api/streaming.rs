//! Exec, Attach and PortForward: the request is checked, parked under a single-use token on the
//! streaming server, and its URL answered (kubelet proxies the client there).

use crate::cri;

use super::{ApiError, Server};
use crate::stream::Session;

impl Server {
    /// The running container `id` resolves to, after the checks Exec and Attach share.
    fn streamable(
        &self,
        id: &str,
        stdio: (bool, bool, bool),
        tty: bool,
    ) -> Result<String, ApiError> {
        let (state, id) = self.known_container(id)?;
        if state.containers[&id].cri_state() != cri::ContainerState::ContainerRunning {
            return Err(ApiError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let (stdin, stdout, stderr) = stdio;
        if !(stdin || stdout || stderr) {
            return Err(ApiError::invalid(
                "stdin",
                "one of stdin, stdout and stderr must be true",
            ));
        }
        if tty && stderr {
            return Err(ApiError::invalid(
                "stderr",
                "tty and stderr cannot both be true (a terminal merges stderr into stdout)",
            ));
        }
        Ok(id)
    }

    pub async fn exec(&self, req: cri::ExecRequest) -> Result<cri::ExecResponse, ApiError> {
        if req.cmd.is_empty() {
            return Err(ApiError::invalid("cmd", "required"));
        }
        let id = self.streamable(
            &req.container_id,
            (req.stdin, req.stdout, req.stderr),
            req.tty,
        )?;
        let url = self
            .stream
            .register(Session::Exec(cri::ExecRequest {
                container_id: id,
                ..req
            }))
            .map_err(no_token)?;
        Ok(cri::ExecResponse { url })
    }

    /// Attach: stdin is attached only when the container was created with stdin (otherwise
    /// the session carries its output alone).
    pub async fn attach(&self, req: cri::AttachRequest) -> Result<cri::AttachResponse, ApiError> {
        let id = self.streamable(
            &req.container_id,
            (req.stdin, req.stdout, req.stderr),
            req.tty,
        )?;
        let url = self
            .stream
            .register(Session::Attach(cri::AttachRequest {
                container_id: id,
                ..req
            }))
            .map_err(no_token)?;
        Ok(cri::AttachResponse { url })
    }

    pub async fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, ApiError> {
        let id = self
            .resolve_sandbox(&req.pod_sandbox_id)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "sandbox",
                id: req.pod_sandbox_id.clone(),
            })?;
        // (Looked up again: a removal may have ended the record since.)
        if !self
            .journal
            .state()
            .sandboxes
            .get(&id)
            .is_some_and(|s| s.ready())
        {
            return Err(ApiError::FailedPrecondition(format!(
                "pod sandbox {id} is not ready"
            )));
        }
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(ApiError::invalid("port", format!("{p} is not a port")));
        }
        if req.port.len() > crate::stream::portforward::MAX_PORTS {
            return Err(ApiError::invalid(
                "port",
                format!(
                    "{} ports; at most {} in one port-forward",
                    req.port.len(),
                    crate::stream::portforward::MAX_PORTS
                ),
            ));
        }
        let url = self
            .stream
            .register(Session::PortForward(cri::PortForwardRequest {
                pod_sandbox_id: id,
                ..req
            }))
            .map_err(no_token)?;
        Ok(cri::PortForwardResponse { url })
    }
}

/// No token could be made (the kernel gave no randomness): no streaming, rather than a
/// guessable URL.
fn no_token(e: std::io::Error) -> ApiError {
    ApiError::NotReady(format!(
        "no streaming URL: the kernel's random number generator failed: {e}"
    ))
}
