//! Changes in the CNI conf dir as inotify reports them: a config written and closed, renamed in
//! or out, or deleted, so that the rescan follows at once (containerd's CRI reacts to the same
//! through fsnotify). What inotify does not report here (a symlink made, the dir itself created
//! later) the periodic rescan still finds; a dir that is not there yet is watched once it is.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The inotify instance watching the conf dir (non-blocking, for tokio's reactor).
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The conf dir's changes; without a watch (the dir absent, inotify refused) it reports none.
pub struct ConfDirChanges {
    watch: Option<AsyncFd<Watch>>,
}

impl ConfDirChanges {
    /// Watches `dir` if it can.
    pub fn new(dir: &Path) -> Self {
        let mut changes = ConfDirChanges { watch: None };
        changes.rewatch(dir);
        changes
    }

    /// Watches `dir` again if the watch is gone (the dir was absent or removed).
    pub fn rewatch(&mut self, dir: &Path) {
        if self.watch.is_some() {
            return;
        }
        let mask = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        let watched = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| i.add_watch(dir, mask).map(|_| i))
            .map_err(std::io::Error::from)
            .and_then(|i| {
                // SAFETY: `Watch` owns the inotify fd for as long as the AsyncFd holds it and
                // always answers that same fd.
                unsafe { AsyncFd::register_with_interest(Watch(i), Interest::READABLE) }
                    .map_err(std::io::Error::from)
            });
        match watched {
            Ok(fd) => self.watch = Some(fd),
            Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "CNI conf dir not watched"),
        }
    }

    /// Waits for the next change (forever without a watch), then takes every event queued so
    /// that a burst is one change. A watch whose dir went away is dropped (see `rewatch`).
    pub async fn changed(&mut self) {
        let Some(fd) = &self.watch else {
            return std::future::pending().await;
        };
        let gone = loop {
            let Ok(mut ready) = fd.readable().await else {
                break true;
            };
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
                Ok(Ok(events)) => break Self::lost(&events) || self.drain_lost(),
                Ok(Err(_)) => break true,
                Err(_would_block) => continue,
            }
        };
        if gone {
            self.watch = None;
        }
    }

    /// Reads what else is queued (without waiting); answers whether the watch is gone.
    fn drain_lost(&self) -> bool {
        let Some(fd) = &self.watch else { return true };
        loop {
            match fd.get_ref().0.read_events() {
                Ok(events) if Self::lost(&events) => return true,
                Ok(_) => continue,
                Err(Errno::EAGAIN) => return false,
                Err(_) => return true,
            }
        }
    }

    /// Whether `events` end the watch (its dir deleted or moved, or events lost: a rescan
    /// follows anyway and a new watch starts clean).
    fn lost(events: &[nix::sys::inotify::InotifyEvent]) -> bool {
        let end = AddWatchFlags::IN_IGNORED
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_Q_OVERFLOW;
        events.iter().any(|e| e.mask.intersects(end))
    }

    /// Whether the dir is watched now.
    #[cfg(test)]
    fn watching(&self) -> bool {
        self.watch.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn within(changes: &mut ConfDirChanges, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), changes.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_config_written_renamed_or_deleted_is_a_change_and_a_removed_dir_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        let mut changes = ConfDirChanges::new(&conf);
        assert!(!changes.watching(), "no dir yet");
        assert!(!within(&mut changes, 50).await);
        std::fs::create_dir(&conf).unwrap();
        changes.rewatch(&conf);
        assert!(changes.watching());

        std::fs::write(conf.join("10-a.conflist"), "{}").unwrap();
        assert!(within(&mut changes, 2000).await, "a write");
        assert!(!within(&mut changes, 50).await, "one write is one change");
        std::fs::write(dir.path().join("tmp"), "{}").unwrap();
        std::fs::rename(dir.path().join("tmp"), conf.join("20-b.conflist")).unwrap();
        assert!(within(&mut changes, 2000).await, "a rename in");
        std::fs::remove_file(conf.join("10-a.conflist")).unwrap();
        assert!(within(&mut changes, 2000).await, "a deletion");

        std::fs::remove_dir_all(&conf).unwrap();
        assert!(within(&mut changes, 2000).await, "the dir removed");
        assert!(!changes.watching(), "its watch is gone");
        std::fs::create_dir(&conf).unwrap();
        changes.rewatch(&conf);
        std::fs::write(conf.join("10-c.conflist"), "{}").unwrap();
        assert!(within(&mut changes, 2000).await, "a write in the new dir");
    }
}
