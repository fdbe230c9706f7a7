//! A client of the wire itself, below the client library, for the tests
//! that play a misbehaving peer: one that starts uploads and never
//! finishes them, asks for answers and stops reading them, or hears its
//! task events and never answers them.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use wrun_proto::capnp;
use wrun_proto::capnp_rpc::{self, rpc_twoparty_capnp::Side};
use wrun_proto::wrun_capnp::{client_session, cluster, task_listener};

/// A stream that stops reading once `stalled` is set: the peer then sees a
/// client that sends calls but never reads their answers.
pub struct Stalling {
    inner: TcpStream,
    stalled: Rc<Cell<bool>>,
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stalled.get() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Task events heard, by key: `true` done, `false` failed.
#[derive(Default)]
struct Heard(RefCell<Vec<(u64, bool)>>);

/// Records the events; while `silent` is set, never answers the call.
struct Listener(Rc<Heard>, Rc<Cell<bool>>);

impl task_listener::Server for Listener {
    async fn events(
        self: CapRc<Self>,
        params: task_listener::EventsParams,
        _: task_listener::EventsResults,
    ) -> Result<(), capnp::Error> {
        use wrun_proto::wrun_capnp::task_event::Which;
        for e in params.get()?.get_events()?.iter() {
            let done = matches!(e.which()?, Which::Done(_));
            self.0.0.borrow_mut().push((e.get_key(), done));
        }
        if self.1.get() {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// A raw session on the current thread's `LocalSet`.
pub struct RawSession {
    /// The session capability.
    pub session: client_session::Client,
    /// Set to stop reading from the scheduler.
    pub stalled: Rc<Cell<bool>>,
    /// Set to hear task events but never answer their calls.
    pub silent: Rc<Cell<bool>>,
    heard: Rc<Heard>,
}

impl RawSession {
    /// Connects to `address` (plain TCP) and opens a session with `token`.
    pub async fn open(address: &str, token: &str) -> RawSession {
        let stream = wrun_proto::connect_with_retry(address, Duration::from_secs(10))
            .await
            .expect("connecting");
        let stalled = Rc::new(Cell::new(false));
        let mut rpc = wrun_proto::rpc_system(
            Stalling {
                inner: stream,
                stalled: stalled.clone(),
            },
            Side::Client,
            None,
        );
        let bootstrap: cluster::Client = rpc.bootstrap(Side::Server);
        tokio::task::spawn_local(rpc);
        let heard = Rc::new(Heard::default());
        let silent = Rc::new(Cell::new(false));
        let mut request = bootstrap.connect_client_request();
        request.get().set_token(token);
        request.get().set_listener(capnp_rpc::new_client(Listener(
            heard.clone(),
            silent.clone(),
        )));
        let response = request.send().promise.await.expect("a session");
        RawSession {
            session: response.get().unwrap().get_session().unwrap(),
            stalled,
            silent,
            heard,
        }
    }

    /// Sends one upload chunk (`total` bytes announced), as a client that
    /// may never send the rest.
    pub async fn upload_chunk(
        &self,
        digest: [u8; 32],
        offset: u64,
        total: u64,
        data: &[u8],
    ) -> Result<bool, String> {
        let mut request = self.session.upload_module_request();
        let mut p = request.get();
        p.set_digest(&digest);
        p.set_offset(offset);
        p.set_total(total);
        p.set_data(data);
        request
            .send()
            .promise
            .await
            .map(|r| r.get().unwrap().get_complete())
            .map_err(|e| e.to_string())
    }

    /// Uploads a whole module in one chunk; its digest.
    pub async fn upload_module(&self, module: &[u8]) -> [u8; 32] {
        let digest = wrun_abi::ModuleDigest::of(module).0;
        let complete = self
            .upload_chunk(digest, 0, module.len() as u64, module)
            .await;
        assert_eq!(complete, Ok(true), "uploading the module");
        digest
    }

    /// Submits `task(args)` (MessagePack array of arguments) as key `key`.
    pub async fn submit(&self, module: [u8; 32], task: &str, args: &[Vec<u8>], key: u64) {
        let mut request = self.session.submit_request();
        let mut t = request.get().init_tasks(1).get(0);
        t.set_key(key);
        t.set_module(&module);
        t.set_task(task);
        wrun_proto::limits::write(&wrun_proto::TaskLimits::DEFAULT, t.reborrow().init_limits());
        let mut list = t.init_args(args.len() as u32);
        for (i, a) in args.iter().enumerate() {
            list.reborrow().get(i as u32).set_value(a);
        }
        request.send().promise.await.expect("submitted");
    }

    /// Waits until the task `key` is reported done.
    pub async fn done(&self, key: u64) {
        loop {
            if self
                .heard
                .0
                .borrow()
                .iter()
                .any(|(k, done)| *k == key && *done)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
