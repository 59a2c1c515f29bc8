//! One JSON-RPC connection shared by any number of tasks: requests carry increasing integer
//! ids and a reader task routes each reply to its waiter, `update` notifications to their
//! monitor, and answers the server's `echo` keepalives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{self, Framer, Incoming};
use crate::endpoint::Endpoint;
use crate::error::{OvsdbError, Result, Unavailable};
use crate::monitor::{Monitor, MonitorRequest, TableUpdates};
use crate::op::{self, Op, OpResult};

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Limit for establishing the connection.
    pub connect_timeout: Duration,
    /// Default limit for one request/reply round trip.
    pub request_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
        }
    }
}

type Reply = std::result::Result<Value, Value>;

#[derive(Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    monitors: HashMap<String, mpsc::UnboundedSender<Value>>,
    closed: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain maps behind, still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection dead; dropping the senders wakes every waiter and monitor.
    fn close(&self, reason: String) {
        let mut st = self.lock();
        if st.closed.is_none() {
            tracing::debug!(%reason, "ovsdb connection closed");
            st.closed = Some(reason);
        }
        st.pending.clear();
        st.monitors.clear();
    }

    fn closed_error(&self) -> OvsdbError {
        let reason = self
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| "connection lost".into());
        Unavailable::Closed { reason }.into()
    }
}

struct Inner {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    options: Options,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// An OVSDB connection. Cheap to clone; all clones share the connection, which closes
/// when the last clone is dropped. There is no automatic reconnect: after an
/// `Unavailable` error, connect again.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .finish()
    }
}

/// Removes a pending request if its caller gives up (timeout or dropped future).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl Client {
    /// Connects to `unix:PATH` or `tcp:HOST:PORT` with default options.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url, Options::default()).await
    }

    pub async fn connect_with(url: &str, options: Options) -> Result<Client> {
        let endpoint: Endpoint = url.parse()?;
        let connect = async {
            match &endpoint {
                Endpoint::Unix(path) => tokio::net::UnixStream::connect(path).await.map(|s| {
                    let (r, w) = s.into_split();
                    spawn_io(r, w)
                }),
                Endpoint::Tcp(addr) => {
                    tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map(|s| {
                            // Small request/reply messages: do not let Nagle delay them.
                            let _ = s.set_nodelay(true);
                            let (r, w) = s.into_split();
                            spawn_io(r, w)
                        })
                }
            }
        };
        let (shared, tx, tasks) = match tokio::time::timeout(options.connect_timeout, connect).await
        {
            Ok(Ok(io)) => io,
            Ok(Err(source)) => {
                return Err(Unavailable::Connect {
                    url: endpoint.to_string(),
                    source,
                }
                .into())
            }
            Err(_) => {
                return Err(Unavailable::ConnectTimeout {
                    url: endpoint.to_string(),
                    timeout: options.connect_timeout,
                }
                .into())
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                shared,
                tx,
                next_id: AtomicU64::new(1),
                options,
                tasks,
            }),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The default per-request timeout of this connection.
    pub fn request_timeout(&self) -> Duration {
        self.inner.options.request_timeout
    }

    /// True once the connection is known to be gone.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed.is_some()
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A raw JSON-RPC call with the default timeout; an `error` reply becomes `OvsdbError::Rpc`.
    pub async fn call(&self, method: &'static str, params: Value) -> Result<Value> {
        self.call_timeout(method, params, self.inner.options.request_timeout)
            .await
    }

    pub async fn call_timeout(
        &self,
        method: &'static str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let shared = &self.inner.shared;
        let id = self.next_id();
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut st = shared.lock();
            if st.closed.is_some() {
                drop(st);
                return Err(shared.closed_error());
            }
            st.pending.insert(id, reply_tx);
        }
        let _guard = PendingGuard { shared, id };
        if self
            .inner
            .tx
            .send(codec::request(id, method, params))
            .is_err()
        {
            return Err(shared.closed_error());
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Err(_) => Err(Unavailable::Timeout { method, timeout }.into()),
            Ok(Err(_)) => Err(shared.closed_error()),
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(OvsdbError::rpc(method, &error)),
        }
    }

    /// Round trip to the server (liveness check).
    pub async fn echo(&self) -> Result<()> {
        let payload = json!(["leengine"]);
        let reply = self.call("echo", payload.clone()).await?;
        if reply != payload {
            return Err(OvsdbError::protocol(format!("echo returned {reply}")));
        }
        Ok(())
    }

    /// Names of the databases the server holds.
    pub async fn list_dbs(&self) -> Result<Vec<String>> {
        let reply = self.call("list_dbs", json!([])).await?;
        serde_json::from_value(reply.clone())
            .map_err(|_| OvsdbError::protocol(format!("list_dbs returned {reply}")))
    }

    /// Runs `ops` as one atomic transaction on `db` with the default timeout.
    /// The first failed operation (or commit) becomes `OvsdbError::Operation`.
    pub async fn transact(&self, db: &str, ops: Vec<Op>) -> Result<Vec<OpResult>> {
        self.transact_timeout(db, ops, self.inner.options.request_timeout)
            .await
    }

    /// Like `transact`, with a timeout of its own (a transaction with a `wait` operation
    /// may legitimately take as long as the wait).
    pub async fn transact_timeout(
        &self,
        db: &str,
        ops: Vec<Op>,
        timeout: Duration,
    ) -> Result<Vec<OpResult>> {
        let labels: Vec<String> = ops.iter().map(Op::label).collect();
        let mut params = vec![json!(db)];
        params.extend(ops.into_iter().map(Op::into_json));
        let reply = self
            .call_timeout("transact", Value::Array(params), timeout)
            .await?;
        op::parse_results(&labels, reply)
    }

    /// Starts a monitor: the reply's initial contents, then every change as it commits.
    pub async fn monitor(&self, db: &str, requests: &[MonitorRequest]) -> Result<Monitor> {
        let id = format!("m{}", self.next_id());
        let (tx, rx) = mpsc::unbounded_channel();
        // Registered before the request goes out so that no update can slip past.
        self.inner.shared.lock().monitors.insert(id.clone(), tx);
        let mut reqs = serde_json::Map::new();
        for r in requests {
            reqs.insert(r.table.clone(), r.to_json());
        }
        let reply = self.call("monitor", json!([db, id, reqs])).await;
        match reply {
            Ok(initial) => Ok(Monitor::new(self.clone(), id, TableUpdates(initial), rx)),
            Err(e) => {
                self.inner.shared.lock().monitors.remove(&id);
                Err(e)
            }
        }
    }

    /// Stops the monitor `id` on the server and drops its channel.
    pub(crate) async fn monitor_cancel(&self, id: &str) -> Result<()> {
        self.inner.shared.lock().monitors.remove(id);
        self.call("monitor_cancel", json!([id])).await.map(drop)
    }

    /// For `Drop` of a monitor: stop it without waiting for the reply.
    pub(crate) fn monitor_forget(&self, id: &str) {
        let known = self.inner.shared.lock().monitors.remove(id).is_some();
        if known {
            let _ = self.inner.tx.send(codec::request(
                self.next_id(),
                "monitor_cancel",
                json!([id]),
            ));
        }
    }

    pub(crate) fn closed_error(&self) -> OvsdbError {
        self.inner.shared.closed_error()
    }
}

type Io = (
    Arc<Shared>,
    mpsc::UnboundedSender<Vec<u8>>,
    [JoinHandle<()>; 2],
);

fn spawn_io<R, W>(reader: R, writer: W) -> Io
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let w = tokio::spawn(write_loop(writer, rx, shared.clone()));
    let r = tokio::spawn(read_loop(reader, tx.clone(), shared.clone()));
    (shared, tx, [r, w])
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = w.write_all(&msg).await {
            shared.close(format!("write failed: {e}"));
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    let reason = loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break "server closed the connection".to_string(),
            Ok(n) => n,
            Err(e) => break format!("read failed: {e}"),
        };
        framer.push(&buf[..n]);
        let mut fatal = None;
        while let Some(msg) = framer.next_value() {
            // Bad JSON desynchronises the stream; a well-formed but unexpected message does not.
            let msg = match msg {
                Ok(msg) => msg,
                Err(e) => {
                    fatal = Some(e.to_string());
                    break;
                }
            };
            match codec::classify(msg) {
                Ok(incoming) => dispatch(incoming, &tx, &shared),
                Err(e) => tracing::warn!(error = %e, "ignoring unexpected ovsdb message"),
            }
        }
        if let Some(reason) = fatal {
            break reason;
        }
    };
    shared.close(reason);
}

fn dispatch(msg: Incoming, tx: &mpsc::UnboundedSender<Vec<u8>>, shared: &Shared) {
    match msg {
        Incoming::Response { id, result } => {
            // No waiter: the caller timed out or it was a fire-and-forget cancel.
            if let Some(waiter) = shared.lock().pending.remove(&id) {
                let _ = waiter.send(result);
            }
        }
        Incoming::Request { id, method, params } if method == "echo" => {
            let _ = tx.send(codec::response(id, params));
        }
        Incoming::Request { id, method, .. } => {
            let reply =
                json!({"id": id, "result": null, "error": format!("unknown method {method}")});
            let _ = tx.send(reply.to_string().into_bytes());
        }
        Incoming::Notification { method, params } if method == "update" => {
            let (Some(mon), Some(updates)) = (params.get(0).and_then(Value::as_str), params.get(1))
            else {
                tracing::warn!(%params, "malformed ovsdb update notification");
                return;
            };
            if let Some(ch) = shared.lock().monitors.get(mon) {
                let _ = ch.send(updates.clone());
            }
        }
        Incoming::Notification { method, .. } => {
            tracing::debug!(%method, "ignoring ovsdb notification");
        }
    }
}
