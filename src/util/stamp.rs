//! When a file may be taken as unchanged without reading it: its [`Stamp`] (device, inode,
//! size, mtime, ctime) equal to the one seen when it was last read, and that read not "racy".
//!
//! A stamp alone is not enough. File times come from a coarse clock, so a write in the same
//! tick as our read, keeping the size, leaves the stamp as it was (git's "racy clean"
//! problem). [`Seen::trusted`] therefore trusts a stamp only once the file's ctime is
//! [`SETTLED`] older than the read that confirmed its content; until then the file is read
//! again. ctime cannot be set by a user (mtime can, with `touch -d`), and it moves with every
//! write, chmod and rename into place.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

/// How much older than the confirming read a file's ctime must be before its stamp is
/// trusted: well above a kernel clock tick, and above the 1 s of filesystems with coarse
/// times.
pub const SETTLED: Duration = Duration::from_secs(2);

/// Which file a path names and what its metadata says of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The file's ctime as a point in time (None before the epoch).
    fn changed(&self) -> Option<SystemTime> {
        let (s, ns) = self.ctime;
        let secs = u64::try_from(s).ok()?;
        let nanos = u32::try_from(ns).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }
}

/// What was learnt of a file by reading it (its hash, its parsed content), with the stamp it
/// had then and when the content was confirmed.
#[derive(Debug, Clone)]
pub struct Seen<T> {
    pub stamp: Stamp,
    confirmed: SystemTime,
    pub value: T,
}

impl<T> Seen<T> {
    /// `value` was read from a file whose stamp (taken on the open file, before the read) was
    /// `stamp`, just now.
    pub fn now(stamp: Stamp, value: T) -> Seen<T> {
        Seen {
            stamp,
            confirmed: SystemTime::now(),
            value,
        }
    }

    /// Whether a file stamped `now` still holds what was seen, without reading it.
    pub fn trusted(&self, now: &Stamp) -> bool {
        if *now != self.stamp {
            return false;
        }
        match self.stamp.changed() {
            Some(c) => c + SETTLED <= self.confirmed,
            None => false,
        }
    }

    /// The file was read again and found to hold the same: the confirmation moves to now, so
    /// a file whose stamp was racy is trusted once it has settled.
    pub fn confirm(&mut self) {
        self.confirmed = SystemTime::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_file_is_read_again_until_it_settles_and_any_change_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"one").unwrap();
        let st = Stamp::of(&std::fs::metadata(&p).unwrap());
        let mut seen = Seen::now(st, ());
        // Just written: its ctime is not SETTLED older than the read.
        assert!(!seen.trusted(&st));
        seen.confirmed = SystemTime::now() + SETTLED;
        assert!(seen.trusted(&st));
        // Same size, rewritten in place, its mtime set back by hand to one of the past: the
        // stamp differs all the same.
        std::fs::write(&p, b"two").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        let after = Stamp::of(&std::fs::metadata(&p).unwrap());
        assert!(!seen.trusted(&after));
    }
}
