//! A real NATS server with JetStream (Debian's `nats-server`, installed by `.ci/run`) on a
//! loopback port with a store directory of its own, one per test; killed when dropped.
//! Tests publish to it and read a consumer's state with the `async-nats` client.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, peer, Workspace, WAIT};

/// A `nats-server -js` on `127.0.0.1:port`.
pub struct NatsServer {
    binary: String,
    pub port: u16,
    store: PathBuf,
    log: PathBuf,
    /// A config file (`-c`), for settings beyond the flags.
    config: Option<PathBuf>,
    /// The user and password the test's own client logs in with, when the server asks.
    login: Option<(String, String)>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one whose store is in `ws` (None: nats-server is not installed, and the test
    /// is skipped outside CI).
    pub fn start(ws: &Workspace) -> Option<NatsServer> {
        Self::start_with(ws, None)
    }

    /// [`NatsServer::start`] with `config` (nats-server's config format, e.g.
    /// `max_payload: 4096`).
    pub fn start_with(ws: &Workspace, config: Option<&str>) -> Option<NatsServer> {
        let binary = peer("nats-server", "nats-server")?;
        let mut server = NatsServer {
            binary,
            port: free_port(),
            store: ws.path("nats-store"),
            log: ws.path("nats-server.log"),
            config: config.map(|text| ws.write("nats-server.conf", text)),
            login: None,
            child: None,
        };
        server.spawn();
        Some(server)
    }

    fn spawn(&mut self) {
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .arg("-l")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nats-server did not listen on {} ({exited:?}):\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The test's own client logs in as `user`.
    pub fn login(mut self, user: &str, password: &str) -> Self {
        self.login = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs `f` with a client connected to this server.
    pub fn client<R>(&self, f: impl AsyncFnOnce(async_nats::jetstream::Context) -> R) -> R {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = self.url();
        let options = match &self.login {
            Some((user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            None => async_nats::ConnectOptions::new(),
        };
        rt.block_on(async move {
            let client = options.connect(url).await.expect("connect to nats-server");
            let jetstream = async_nats::jetstream::new(client.clone());
            let out = f(jetstream).await;
            client.flush().await.unwrap();
            out
        })
    }

    /// Creates a work-queue stream `name` over `subject`.
    pub fn create_stream(&self, name: &str, subject: &str) {
        self.client(async |js| {
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: name.to_owned(),
                subjects: vec![subject.to_owned()],
                retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .expect("create stream");
        });
    }

    /// Publishes each of `messages` to `subject` and waits for its PubAck.
    pub fn publish(&self, subject: &str, messages: &[String]) {
        self.client(async |js| {
            for message in messages {
                js.publish(subject.to_owned(), message.clone().into())
                    .await
                    .expect("publish")
                    .await
                    .expect("PubAck");
            }
        });
    }

    /// Messages still in stream `name` (a work-queue stream drops each once acked).
    pub fn stream_messages(&self, name: &str) -> u64 {
        self.client(async |js| {
            let mut stream = js.get_stream(name).await.expect("stream");
            stream.info().await.expect("stream info").state.messages
        })
    }

    /// The consumer's (ack pending, redelivered) counts.
    pub fn consumer_state(&self, stream: &str, consumer: &str) -> (usize, usize) {
        self.client(async |js| {
            let stream = js.get_stream(stream).await.expect("stream");
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(consumer).await.expect("consumer");
            let info = consumer.info().await.expect("consumer info");
            (info.num_ack_pending, info.num_redelivered)
        })
    }

    /// Waits until stream `name` is empty (every message acked); false on timeout.
    pub fn wait_empty(&self, name: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stream_messages(name) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `events`, one message per `per_message` of them, one event per line.
pub fn messages_of(events: &[String], per_message: usize) -> Vec<String> {
    events
        .chunks(per_message)
        .map(|chunk| chunk.iter().map(|e| format!("{e}\n")).collect())
        .collect()
}
