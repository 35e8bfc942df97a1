//! Where concord keeps what it makes under its state dir: the one place that knows the layout.
//!
//! ```text
//! <state_dir>/journal.redb                the journal (0600)
//! <state_dir>/cni-cache/                  libcni's cache of attachment results
//! <state_dir>/tmp/load-*/                 LoadImage scratch (removed after the load, and at start)
//! <state_dir>/sandboxes/<id>/             hostname, hosts, resolv.conf, shm/ (the pod's /dev/shm)
//! <state_dir>/containers/<id>/            stdio FIFOs, log-writer.pid, volumes/, exec-*/
//! <state_dir>/image-volumes/<id>/<i>/      mount i's image volume (a read-only snapshot view),
//!                                         apart from containers/ so that removing that tree
//!                                         never reaches into a mounted image
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    pub fn new(root: impl Into<PathBuf>) -> StateLayout {
        StateLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn journal(&self) -> PathBuf {
        self.root.join("journal.redb")
    }

    pub fn cni_cache(&self) -> PathBuf {
        self.root.join("cni-cache")
    }

    /// Scratch space for image loads.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Pod `id`'s files (hostname, hosts, resolv.conf, the shm mount: `oci::files`).
    pub fn sandbox(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    /// Container `id`'s files (stdio FIFOs, the log writer's pidfile, volumes, execs).
    pub fn container(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// The directories of container `id`'s image volumes.
    pub fn container_volumes(&self, id: &str) -> PathBuf {
        self.container(id).join("volumes")
    }

    /// Where container `id`'s image volumes (CRI `Mount.image`) are mounted.
    pub fn image_volumes(&self, id: &str) -> PathBuf {
        self.root.join("image-volumes").join(id)
    }

    /// The mount point of container `id`'s image volume for its mount `index`.
    pub fn image_volume(&self, id: &str, index: usize) -> PathBuf {
        self.image_volumes(id).join(index.to_string())
    }

    /// The pidfile of container `id`'s log writer (ReopenContainerLog signals it).
    pub fn log_writer_pidfile(&self, id: &str) -> PathBuf {
        self.container(id).join("log-writer.pid")
    }

    /// The FIFOs of exec `exec_id` in container `id`.
    pub fn exec(&self, id: &str, exec_id: &str) -> PathBuf {
        self.container(id).join(exec_id)
    }
}
