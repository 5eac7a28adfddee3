//! systemd's readiness protocol (`Type=notify`): one datagram to the socket named by
//! `$NOTIFY_SOCKET`. Written by hand because it is a few lines and the `libsystemd` crates pull
//! in more than it is worth. Outside systemd the variable is unset and every call is a no-op.

use std::io;
use std::os::unix::net::UnixDatagram;

/// `READY=1`: RPC and P2P listen; systemd starts units ordered after us.
pub const READY: &str = "READY=1";
/// `STOPPING=1`: shutdown has begun; systemd shows the unit as deactivating.
pub const STOPPING: &str = "STOPPING=1";

/// Sends `state` to the service manager. `Ok(false)` when not run under one.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send(&target, state)?;
    Ok(true)
}

/// Sends one datagram to `target`: a path, or `@name` for a Linux abstract socket.
pub fn send(target: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    if bytes.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is empty"));
    }
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets need Linux"));
        }
    }
    sock.send_to(state.as_bytes(), std::path::Path::new(target))?;
    Ok(())
}

/// [`notify`], logging instead of failing: a lost notification must not stop the node
/// (systemd then times the start out and says so in the journal).
pub fn notify_or_log(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "notified the service manager"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, "cannot notify the service manager through NOTIFY_SOCKET: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), READY).unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("timed-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), STOPPING).unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("absent").as_os_str(), READY).is_err());
        assert!(send(OsStr::new(""), READY).is_err());
    }
}
