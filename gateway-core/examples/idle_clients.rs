//! Opens N idle WebSocket connections and holds them (the load side of the
//! RSS measurement; see `idle_server.rs`).
//!
//! `cargo run --release -p gateway-core --example idle_clients -- ADDR N [FIRST_SRC]`
//! spreads client source addresses over 127.0.0.FIRST_SRC.. (10,000 per
//! address) so N can exceed the ephemeral port range; prints `held=N` and
//! waits until stdin closes.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};

use socket2::{Domain, Socket, Type};

fn connect(server: SocketAddr, src: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&src.into())?;
    socket.connect(&server.into())?;
    let mut s: TcpStream = socket.into();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 256];
    while !resp.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed during handshake"));
        }
        resp.extend_from_slice(&buf[..n]);
    }
    if !resp.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(String::from_utf8_lossy(&resp).into_owned()));
    }
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let server: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!("usage: idle_clients ADDR N [FIRST_SRC]"))?.parse()?;
    let n: usize = args.next().unwrap_or_else(|| "1000".into()).parse()?;
    let first: u8 = args.next().unwrap_or_else(|| "2".into()).parse()?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let src = SocketAddr::from(([127, 0, 0, first + (i / 10_000) as u8], 0));
        held.push(connect(server, src)?);
    }
    println!("held={}", held.len());
    std::io::stdout().flush()?;
    let _ = std::io::stdin().lock().lines().count();
    Ok(())
}
