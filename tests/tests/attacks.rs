//! What an outside user met that used to hurt the scheduler, each against
//! a real scheduler process: uploads started and never finished, answers
//! asked for and never read, thousands of idle connections, half-sent
//! frames, and exhausted file descriptors. The scheduler stays under a
//! stated memory bound and keeps serving others.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;
use wrun_client::{Client, Target};
use wrun_tests::raw::RawSession;
use wrun_tests::{Procs, SEED_TASKS_WASM, TEST_GUESTS_WASM, read_module, rss_bytes, wait_until};

const LONG: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

struct Cluster {
    procs: Procs,
    file: std::path::PathBuf,
    address: String,
    token: String,
}

fn start(test: &str, scheduler_extra: &[&str], workers: u32, prefix: Option<&str>) -> Cluster {
    let mut procs = Procs::new(test);
    let file = procs.path("scheduler.json");
    let f = file.to_str().unwrap().to_owned();
    let mut args = vec!["scheduler", "--scheduler-file", &f];
    args.extend_from_slice(scheduler_extra);
    match prefix {
        // Under a shell, for a `ulimit` of its own.
        Some(shell) => {
            let command = format!(
                "{shell}; exec {} {}",
                wrun_tests::wrun_binary().display(),
                args.join(" ")
            );
            procs.start_program("scheduler", "sh", &["-c", &command]);
        }
        None => {
            procs.start("scheduler", &args);
        }
    }
    for i in 0..workers {
        procs.start(
            &format!("worker-{i}"),
            &["worker", "--scheduler-file", &f, "--no-nanny"],
        );
    }
    wait_until("the scheduler file", LONG, || file.exists());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let cluster = Cluster {
        address: json["address"].as_str().unwrap().to_owned(),
        token: json["token"].as_str().unwrap().to_owned(),
        file,
        procs,
    };
    let client = cluster.client();
    wait_until("the workers", LONG, || {
        client.status().unwrap().workers.len() == workers as usize
    });
    cluster
}

impl Cluster {
    fn client(&self) -> Client {
        Client::connect(&Target::File(self.file.clone()), LONG).unwrap()
    }

    fn scheduler_pid(&self) -> u32 {
        self.procs.procs[0].child.id()
    }

    /// Another tenant's work still runs, in a few milliseconds.
    fn still_serves(&self) {
        let client = self.client();
        let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
        let started = Instant::now();
        let x = client
            .submit(&module, "add", vec![json!(40).into(), json!(2).into()])
            .unwrap();
        assert_eq!(
            client.gather(&[x]).unwrap()[0].as_ref().unwrap(),
            &json!(42)
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

fn local<T>(work: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, work)
}

#[test]
fn uploads_started_and_never_finished_hold_one_module_each_and_go_with_their_session() {
    let cluster = start("attack-uploads", &[], 1, None);
    let pid = cluster.scheduler_pid();
    let before = rss_bytes(pid);
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    let peak = local(async move {
        // Two sessions each try eight uploads of 64 MiB and finish none.
        let chunk = vec![7u8; 8 << 20];
        let mut sessions = Vec::new();
        let mut refused = 0;
        for s in 0..2u8 {
            let session = RawSession::open(&address, &token).await;
            for m in 0..8u8 {
                let digest = [s * 16 + m + 1; 32];
                for c in 0..8u64 {
                    if session
                        .upload_chunk(digest, c * (8 << 20), 64 << 20, &chunk)
                        .await
                        .is_err()
                    {
                        refused += 1;
                        break;
                    }
                }
            }
            sessions.push(session);
        }
        assert!(refused >= 14, "only {refused} uploads were refused");
        let peak = rss_bytes(pid);
        drop(sessions);
        peak
    });
    let grown = peak.saturating_sub(before);
    eprintln!(
        "unfinished uploads: the scheduler grew by {} MiB",
        grown / MIB
    );
    assert!(grown < 300 * MIB, "grew by {} MiB", grown / MIB);

    // What unfinished uploads reserve (1 GiB at once) goes with their
    // sessions: sixteen sessions reserve it all, a seventeenth is told the
    // scheduler is busy, and once the sixteen leave a newcomer may upload.
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    local(async move {
        let mut sessions = Vec::new();
        for s in 0..16u8 {
            let session = RawSession::open(&address, &token).await;
            let started = session
                .upload_chunk([100 + s; 32], 0, 64 << 20, &[1u8; 1024])
                .await;
            assert_eq!(started, Ok(false));
            sessions.push(session);
        }
        let late = RawSession::open(&address, &token).await;
        let refused = late
            .upload_chunk([99; 32], 0, 64 << 20, &[1u8; 1024])
            .await
            .unwrap_err();
        assert!(refused.contains("too many uploads at once"), "{refused}");
    });
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    wait_until("the left sessions' uploads to be dropped", LONG, || {
        let (address, token) = (address.clone(), token.clone());
        local(async move {
            let session = RawSession::open(&address, &token).await;
            session
                .upload_chunk([99; 32], 0, 64 << 20, &[1u8; 1024])
                .await
                == Ok(false)
        })
    });
    eprintln!(
        "after the sessions left the scheduler holds {} MiB more than before them",
        rss_bytes(pid).saturating_sub(before) / MIB
    );
    cluster.still_serves();
}

#[test]
fn answers_asked_for_and_never_read_do_not_grow_the_scheduler() {
    let cluster = start("attack-unread", &[], 1, None);
    let pid = cluster.scheduler_pid();
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    let guests = read_module(TEST_GUESTS_WASM);
    let (before, peak) = local(async move {
        let session = RawSession::open(&address, &token).await;
        let digest = session.upload_module(&guests).await;
        // An 8 MB result, then 150 fetches of it whose answers are never read.
        session
            .submit(
                digest,
                "big_result",
                &[vec![0xce, 0x00, 0x7a, 0x12, 0x00]],
                1,
            )
            .await;
        session.done(1).await;
        let before = rss_bytes(pid);
        session.stalled.set(true);
        let mut calls = Vec::new();
        for _ in 0..150 {
            let mut request = session.session.fetch_request();
            request.get().set_key(1);
            request.get().set_offset(0);
            calls.push(request.send().promise);
        }
        // Watch the scheduler for a while: it stops producing answers.
        let mut peak = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(rss_bytes(pid));
        }
        drop(calls);
        (before, peak)
    });
    let grown = peak.saturating_sub(before);
    eprintln!(
        "150 unread fetches of 8 MB: the scheduler grew by {} MiB",
        grown / MIB
    );
    assert!(grown < 200 * MIB, "grew by {} MiB", grown / MIB);
    cluster.still_serves();
}

#[test]
fn a_client_that_never_answers_its_events_still_hears_of_later_tasks() {
    // One events call to a client is in flight at a time; a client that
    // hears its events and never answers must not hold its later ones back
    // for good (they go once the call times out, 10 s).
    let cluster = start("attack-silent", &[], 1, None);
    let (address, token) = (cluster.address.clone(), cluster.token.clone());
    let guests = read_module(TEST_GUESTS_WASM);
    local(async move {
        let session = RawSession::open(&address, &token).await;
        let digest = session.upload_module(&guests).await;
        session.silent.set(true);
        session.submit(digest, "count_calls", &[], 1).await;
        session.done(1).await;
        session.submit(digest, "count_calls", &[], 2).await;
        tokio::time::timeout(Duration::from_secs(30), session.done(2))
            .await
            .expect("the second task's event within 30 s");
    });
    cluster.still_serves();
}

/// Raises this process's open-file limit (its children inherit it).
fn allow_open_files(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain FFI calls with a valid pointer to a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = n.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[test]
fn idle_connections_and_half_sent_frames_are_closed_after_the_handshake_time_out() {
    allow_open_files(8192);
    let cluster = start("attack-idle", &["--handshake-timeout", "2s"], 1, None);
    let pid = cluster.scheduler_pid();
    let before = rss_bytes(pid);
    let mut idle: Vec<std::net::TcpStream> = (0..2000)
        .map(|_| std::net::TcpStream::connect(&cluster.address).unwrap())
        .collect();
    // Half a frame: a header promising 100 words, ten bytes of them.
    let mut half = std::net::TcpStream::connect(&cluster.address).unwrap();
    let mut frame = 0u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&100u32.to_le_bytes());
    frame.extend_from_slice(&[0u8; 10]);
    half.write_all(&frame).unwrap();
    idle.push(half);
    // While they are open, others are served.
    cluster.still_serves();
    let grown = rss_bytes(pid).saturating_sub(before);
    eprintln!(
        "2001 idle connections: the scheduler grew by {} MiB",
        grown / MIB
    );
    assert!(grown < 100 * MIB, "grew by {} MiB", grown / MIB);
    // Each is closed by the scheduler within the time-out (and a margin).
    let deadline = Instant::now() + Duration::from_secs(15);
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        let mut byte = [0u8; 1];
        assert!(
            matches!(stream.read(&mut byte), Ok(0) | Err(_)),
            "a connection stayed open"
        );
        assert!(
            Instant::now() < deadline,
            "connections stayed open past the time-out"
        );
    }
    cluster.still_serves();
}

#[test]
fn with_file_descriptors_exhausted_the_scheduler_backs_off_and_recovers() {
    let cluster = start("attack-fds", &[], 1, Some("ulimit -n 48"));
    let pid = cluster.scheduler_pid();
    let log = cluster.procs.procs[0].log.clone();
    let log_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let cpu_before = wrun_tests::cpu_time(pid);
    // More connections than it has descriptors left: accept fails.
    let held: Vec<_> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(&cluster.address).ok())
        .collect();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = wrun_tests::cpu_time(pid).saturating_sub(cpu_before);
    let logged = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) - log_before;
    eprintln!("descriptors exhausted for 3 s: {cpu:?} of CPU, {logged} bytes of log");
    assert!(
        cpu < Duration::from_millis(1500),
        "the accept loop spun: {cpu:?} of CPU"
    );
    assert!(logged < 20_000, "{logged} bytes of warnings in 3 s");
    drop(held);
    // Descriptors free again: it serves (the accept back-off is at most 1 s).
    cluster.still_serves();
}

/// A deterministic xorshift: the same frames on every run.
struct Frames(u64);

impl Frames {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// One Cap'n Proto frame of random words, its segment table mostly
    /// consistent (so the bytes reach the RPC decoder), sometimes lying
    /// (huge sizes, many segments), sometimes cut short.
    fn frame(&mut self) -> Vec<u8> {
        let segments = match self.next() % 8 {
            0 => (self.next() % 1024) as u32 + 1,
            _ => (self.next() % 3) as u32 + 1,
        };
        let mut sizes: Vec<u32> = (0..segments.min(4))
            .map(|_| match self.next() % 16 {
                0 => u32::MAX - (self.next() % 16) as u32,
                _ => (self.next() % 48) as u32,
            })
            .collect();
        sizes.resize(segments as usize, 1);
        let mut frame = (segments - 1).to_le_bytes().to_vec();
        for size in &sizes {
            frame.extend_from_slice(&size.to_le_bytes());
        }
        if segments % 2 == 0 {
            frame.extend_from_slice(&[0; 4]);
        }
        let words: u64 = sizes.iter().map(|s| u64::from(*s).min(64)).sum();
        for _ in 0..words {
            frame.extend_from_slice(&self.next().to_le_bytes());
        }
        if self.next().is_multiple_of(4) {
            let keep = (self.next() as usize) % frame.len();
            frame.truncate(keep);
        }
        frame
    }
}

#[test]
fn random_frames_are_refused_and_the_sessions_already_open_keep_working() {
    let cluster = start("attack-frames", &["--handshake-timeout", "2s"], 1, None);
    let pid = cluster.scheduler_pid();
    let before = rss_bytes(pid);
    // A session opened before the noise, used after it.
    let client = cluster.client();
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let mut frames = Frames(0x9e37_79b9_7f4a_7c15);
    let mut streams = Vec::new();
    for _ in 0..256 {
        let mut stream = std::net::TcpStream::connect(&cluster.address).unwrap();
        // The scheduler may close before reading all of it: that is a refusal too.
        let _ = stream.write_all(&frames.frame());
        streams.push(stream);
    }
    // Each connection is closed (a bad frame at once, a cut one by the
    // handshake time-out), none answered with a session.
    let deadline = Instant::now() + Duration::from_secs(20);
    for stream in &mut streams {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut sink = Vec::new();
        let read = stream.read_to_end(&mut sink);
        assert!(
            read.is_ok()
                || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "a connection stayed open: {read:?}"
        );
    }
    let grown = rss_bytes(pid).saturating_sub(before);
    eprintln!(
        "256 random frames: the scheduler grew by {} MiB",
        grown / MIB
    );
    assert!(grown < 100 * MIB, "grew by {} MiB", grown / MIB);
    let x = client
        .submit(&module, "add", vec![json!(40).into(), json!(2).into()])
        .unwrap();
    assert_eq!(
        client.gather(&[x]).unwrap()[0].as_ref().unwrap(),
        &json!(42)
    );
    cluster.still_serves();
}
