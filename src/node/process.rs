//! Process helpers of the node.

/// A free loopback port for an instance (the kernel's choice, released for the worker to
/// bind).
pub fn free_port() -> std::io::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    probe.local_addr().map(|a| a.port())
}
