//! The steps of the reconcile running in this task (netns, cni_add, task_start...), each with
//! its duration and outcome: recorded by the reconcilers' step timers, shown by `concord inspect`
//! and the verbose status info.

use std::cell::RefCell;
use std::time::Duration;

/// One step of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: &'static str,
    pub duration: Duration,
    pub ok: bool,
}

tokio::task_local! {
    static STEPS: RefCell<Vec<Step>>;
}

/// Most steps kept of one reconcile (a reconcile retries nothing itself; this only bounds a bug).
const MAX: usize = 64;

/// Runs `f` (one reconcile) and answers its output with the steps it recorded.
pub async fn collect<T>(f: impl std::future::Future<Output = T>) -> (T, Vec<Step>) {
    STEPS
        .scope(RefCell::new(Vec::new()), async move {
            let out = f.await;
            (out, STEPS.with(|s| s.take()))
        })
        .await
}

/// Records a step of the reconcile running in this task (nothing outside one).
pub fn record(name: &'static str, duration: Duration, ok: bool) {
    let _ = STEPS.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX {
            s.push(Step { name, duration, ok });
        }
    });
}

/// Whether a step's output is a success: a `Result` by its variant, anything else counts as one.
pub trait Outcome {
    fn ok(&self) -> bool;
}

impl<T, E> Outcome for Result<T, E> {
    fn ok(&self) -> bool {
        self.is_ok()
    }
}

impl Outcome for () {
    fn ok(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_recorded_inside_a_collection_are_answered_and_none_leak_outside() {
        record("outside", Duration::ZERO, true);
        let (n, steps) = collect(async {
            record("netns", Duration::from_millis(2), true);
            record("cni_add", Duration::from_millis(5), false);
            7
        })
        .await;
        assert_eq!(n, 7);
        assert_eq!(
            steps.iter().map(|s| (s.name, s.ok)).collect::<Vec<_>>(),
            [("netns", true), ("cni_add", false)]
        );
        let (_, again) = collect(async {}).await;
        assert!(again.is_empty());
    }
}
