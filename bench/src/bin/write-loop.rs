//! write-loop: the reference cost of a delivery. Opens N loopback TCP
//! connections (a child process of this binary accepts nothing, it connects
//! and drains, so each process holds only N descriptors), then writes one
//! ~200-byte WebSocket text frame to each socket M times, one `write(2)` per
//! delivery, and reports the writing thread's CPU time per delivery.
//! `--uring` submits each round's sends through one io_uring instead
//! (`--batch` SQEs per `io_uring_enter`): the floor of batched submission.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use clap::Parser;
use gochat_bench::procfs::thread_cpu_micros;
use tokio::io::AsyncReadExt;

#[derive(Parser, Debug)]
#[command(about = "CPU cost of one write(2) per delivery over N loopback sockets")]
struct Args {
    /// Number of sockets (deliveries per round).
    #[arg(long, default_value_t = 2000)]
    sockets: usize,
    /// Rounds: each writes one frame to every socket.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Frame size in bytes, header included.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Submit each round's sends through one io_uring (batches of `--batch`
    /// SQEs per `io_uring_enter`) instead of one `write(2)` per delivery.
    #[arg(long)]
    uring: bool,
    /// SQEs per submission with `--uring`.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run as the draining child connecting to this address.
    #[arg(long, hide = true)]
    drain: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.drain {
        return drain(addr, args.sockets);
    }
    anyhow::ensure!((130..=65_535).contains(&args.size), "--size must be 130..=65535 bytes");
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--drain", &addr.to_string(), "--sockets", &args.sockets.to_string()])
        .stdin(Stdio::null())
        .spawn()?;
    let mut socks = Vec::with_capacity(args.sockets);
    while socks.len() < args.sockets {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    // A server frame: FIN + text opcode, 16-bit extended length, no mask, then payload.
    let payload = args.size - 4;
    let mut frame = vec![0x81, 126, (payload >> 8) as u8, payload as u8];
    frame.extend(std::iter::repeat_n(b'x', payload));

    let (cpu0, t0) = (thread_cpu_micros(), Instant::now());
    if args.uring {
        uring_rounds(&socks, &frame, args.messages, args.batch)?;
    } else {
        for _ in 0..args.messages {
            for s in &mut socks {
                s.write_all(&frame)?;
            }
        }
    }
    let (cpu_us, wall) = (thread_cpu_micros() - cpu0, t0.elapsed().as_secs_f64());
    drop(socks);
    let _ = child.wait();

    let deliveries = (args.sockets * args.messages) as f64;
    let per = cpu_us as f64 / deliveries;
    println!(
        "sockets={} messages={} deliveries={} cpu_us={} cpu_us_per_delivery={:.3} deliveries_per_s={:.0} wall_s={:.3}",
        args.sockets,
        args.messages,
        deliveries,
        cpu_us,
        per,
        deliveries / wall,
        wall
    );
    if let Some(path) = args.json {
        let v = serde_json::json!({
            "sockets": args.sockets, "messages": args.messages, "deliveries": deliveries,
            "cpu_us": cpu_us, "cpu_us_per_delivery": per, "wall_s": wall,
        });
        std::fs::write(path, v.to_string())?;
    }
    Ok(())
}

/// Writes `frame` to every socket `rounds` times, `batch` sends per
/// `io_uring_enter`; a short or refused send is finished with `write(2)`.
fn uring_rounds(socks: &[std::net::TcpStream], frame: &[u8], rounds: usize, batch: usize) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let batch = batch.clamp(1, 4096);
    let mut ring = io_uring::IoUring::new(batch.next_power_of_two() as u32)?;
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    for _ in 0..rounds {
        for chunk in socks.chunks(batch) {
            for (i, s) in chunk.iter().enumerate() {
                let sqe = io_uring::opcode::Send::new(io_uring::types::Fd(s.as_raw_fd()), frame.as_ptr(), frame.len() as u32)
                    .flags(flags)
                    .build()
                    .user_data(i as u64);
                // SAFETY: `frame` outlives the submission: every SQE is reaped below before the next round.
                unsafe { ring.submission().push(&sqe) }.map_err(|_| anyhow::anyhow!("submission queue full"))?;
            }
            ring.submit_and_wait(chunk.len())?;
            for cqe in ring.completion() {
                let sent = usize::try_from(cqe.result()).unwrap_or(0);
                if sent < frame.len() {
                    let mut s = &chunk[cqe.user_data() as usize];
                    s.write_all(&frame[sent..])?;
                }
            }
        }
    }
    Ok(())
}

/// Connects `n` sockets to `addr` and reads them until the writer closes them.
fn drain(addr: SocketAddr, n: usize) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(k) if k > 0) {}
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })
}
