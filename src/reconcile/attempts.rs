//! Which objects this process is converging for the first time. An object recorded by this
//! process (not replayed from the journal) that has not been tried yet cannot have left anything
//! behind (a CNI attachment, a snapshot, a containerd container, a task): its first attempt
//! skips the round trips that look for such leftovers. A retry, or any object a previous process
//! knew, checks everything, as before.

use std::collections::HashSet;

use parking_lot::Mutex;

#[derive(Debug, Default)]
pub struct FirstAttempts {
    /// The objects the journal held when this process started.
    replayed: HashSet<String>,
    /// The objects this process has begun to converge.
    attempted: Mutex<HashSet<String>>,
}

impl FirstAttempts {
    /// `replayed`: the ids of the kind's records at start.
    pub fn new(replayed: impl IntoIterator<Item = String>) -> FirstAttempts {
        FirstAttempts {
            replayed: replayed.into_iter().collect(),
            attempted: Mutex::default(),
        }
    }

    /// Whether this is the first attempt at `id` (true once per object at most).
    pub fn first(&self, id: &str) -> bool {
        !self.replayed.contains(id) && self.attempted.lock().insert(id.to_string())
    }

    /// Whether the journal held `id` when this process started.
    pub fn replayed(&self, id: &str) -> bool {
        self.replayed.contains(id)
    }

    /// `id` is gone: nothing more is kept of it.
    pub fn forget(&self, id: &str) {
        self.attempted.lock().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_object_has_a_first_attempt_and_only_one() {
        let a = FirstAttempts::new(["old".to_string()]);
        assert!(!a.first("old"));
        assert!(a.first("new"));
        assert!(!a.first("new"));
        a.forget("new");
        assert!(a.first("new"));
    }
}
