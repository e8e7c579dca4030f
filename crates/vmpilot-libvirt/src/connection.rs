//! One libvirt connection, opened quietly and closed on drop.

use std::sync::Once;

use virt::connect::Connect;
use virt::error::Error as VirtError;

/// An open connection, closed on drop (the `virt` crate leaves closing to its user). The
/// reference coordinator's guest launcher uses it too.
pub struct Conn(pub Connect);

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing a connection whose daemon is gone can fail; there is nothing left to free
        // on our side then.
        let _ = self.0.close();
    }
}

/// Open `uri` with libvirt's default error handler silenced: it prints every error to
/// stderr, and ours are returned to the caller, who reports them with context.
pub fn open_connection(uri: &str) -> Result<Conn, VirtError> {
    static QUIET: Once = Once::new();
    QUIET.call_once(virt::error::clear_error_callback);
    Connect::open(Some(uri)).map(Conn)
}
