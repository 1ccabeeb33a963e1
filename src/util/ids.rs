//! User and group names as this host knows them (`/etc/passwd`, NSS), for the `owner` and
//! `group` config keys: a numeric id is taken as it is, a name is looked up.

use std::ffi::CString;

/// The uid of `name` (or a number); None when this host has no such user.
pub fn uid(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(n);
    }
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: pwd and result are written by getpwnam_r, within buf's length; the name is a
    // valid C string.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
    }
}

/// The gid of `name` (or a number); None when this host has no such group.
pub fn gid(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Some(n);
    }
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as in `uid`, with getgrnam_r.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_and_numbers() {
        assert_eq!(super::uid("root"), Some(0));
        assert_eq!(super::gid("root"), Some(0));
        assert_eq!(super::uid("4242"), Some(4242));
        assert_eq!(super::uid("no-such-user-rk"), None);
        assert_eq!(super::gid("no-such-group-rk"), None);
    }
}
