//! What this process knows about its runs ahead of its watch cache, and
//! when it last looked at them: the `resourceVersion` its last status write
//! to each run produced (a reconcile that finds an older one in the cache
//! would decide on state this process has already moved past), and when
//! each running run's meter was last read (so the reconciles that pod and
//! status events cause in between do not read it again). Entries go when
//! the cache catches up, when the run is no longer followed, or when the
//! run goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Seen {
    /// Run uid -> `resourceVersion` of this process's last status write.
    written: Mutex<HashMap<String, u64>>,
    /// Run uid -> when its meter was last read.
    metered: Mutex<HashMap<String, Instant>>,
}

/// A `resourceVersion` as a number, where it is one. Kubernetes calls it
/// opaque; it is only ever used here to hold a reconcile back until the
/// watch delivers a write this process made (an unparsable one holds
/// nothing back), never to decide anything about the object.
fn version(rv: Option<&str>) -> Option<u64> {
    rv?.parse().ok()
}

impl Seen {
    /// Records the `resourceVersion` a status write of run `uid` returned.
    pub fn wrote(&self, uid: &str, rv: Option<&str>) {
        if let Some(v) = version(rv) {
            let mut written = self.written.lock().expect("seen lock");
            let entry = written.entry(uid.to_owned()).or_insert(v);
            *entry = (*entry).max(v);
        }
    }

    /// Whether the cached object (`rv`) of run `uid` is older than this
    /// process's last status write to it. Once it is not, the entry goes.
    pub fn is_behind(&self, uid: &str, rv: Option<&str>) -> bool {
        let mut written = self.written.lock().expect("seen lock");
        let Some(&ours) = written.get(uid) else {
            return false;
        };
        match version(rv) {
            Some(cached) if cached < ours => true,
            _ => {
                written.remove(uid);
                false
            }
        }
    }

    /// How long until run `uid`'s meter is due again (read within
    /// `interval`), or `None` when it may be read now (the read is recorded).
    pub fn meter_wait(&self, uid: &str, interval: Duration) -> Option<Duration> {
        let mut metered = self.metered.lock().expect("seen lock");
        let now = Instant::now();
        match metered.get(uid) {
            Some(at) if now.duration_since(*at) < interval => Some(interval - now.duration_since(*at)),
            _ => {
                metered.insert(uid.to_owned(), now);
                None
            }
        }
    }

    /// Run `uid`'s pod ended: its meter is no longer followed.
    pub fn unmeter(&self, uid: &str) {
        self.metered.lock().expect("seen lock").remove(uid);
    }

    /// Forgets run `uid` (it finished, or went).
    pub fn forget(&self, uid: &str) {
        self.written.lock().expect("seen lock").remove(uid);
        self.metered.lock().expect("seen lock").remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_older_than_our_write_is_behind_until_it_catches_up() {
        let seen = Seen::default();
        assert!(!seen.is_behind("u", Some("5")), "nothing written: never behind");
        seen.wrote("u", Some("10"));
        assert!(seen.is_behind("u", Some("9")));
        assert!(!seen.is_behind("u", Some("10")));
        // Caught up: the entry is gone, so an older copy no longer holds back.
        assert!(!seen.is_behind("u", Some("9")));
        seen.wrote("u", Some("12"));
        assert!(
            !seen.is_behind("u", Some("not-a-number")),
            "unparsable holds nothing back"
        );
        seen.wrote("v", Some("opaque"));
        assert!(!seen.is_behind("v", Some("1")), "an unparsable write is not recorded");
    }

    #[test]
    fn the_meter_is_read_once_per_interval_and_again_once_unmetered() {
        let seen = Seen::default();
        let interval = Duration::from_secs(60);
        assert_eq!(seen.meter_wait("u", interval), None);
        let left = seen.meter_wait("u", interval).expect("read just now");
        assert!(left <= interval && left > Duration::from_secs(50), "{left:?}");
        assert_eq!(seen.meter_wait("w", interval), None, "per run");
        seen.unmeter("u");
        assert_eq!(seen.meter_wait("u", interval), None);
        seen.forget("u");
        assert_eq!(seen.meter_wait("u", interval), None);
        assert_eq!(seen.meter_wait("x", Duration::ZERO), None);
        assert_eq!(seen.meter_wait("x", Duration::ZERO), None);
    }
}
