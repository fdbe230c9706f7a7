//! The dashboard in a real headless Chromium (driven over the DevTools
//! protocol), `/metrics` checked by `promtool` and scraped by a real
//! Prometheus, the dashboard's tokens, and the task stream and graph
//! pictures (`wrun events`, `wrun report`, `wrun graph`).

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use wrun_client::{Client, Target};
use wrun_tests::{Procs, TEST_GUESTS_WASM, read_module, wait_until, workspace_root, wrun};

const LONG: Duration = Duration::from_secs(60);

fn connect(file: &Path) -> Client {
    Client::connect(&Target::File(file.to_path_buf()), LONG).expect("connecting")
}

/// Starts `wrun local` with its dashboard on a free port; returns the
/// scheduler file and the dashboard's address.
fn start_local(procs: &mut Procs, workers: u32, threads: u32) -> (PathBuf, String) {
    let file = procs.path("scheduler.json");
    let (workers, threads) = (workers.to_string(), threads.to_string());
    let index = procs.start(
        "local",
        &[
            "local",
            "--workers",
            &workers,
            "--threads",
            &threads,
            "--scheduler-file",
            file.to_str().unwrap(),
            "--dashboard",
            "127.0.0.1:0",
        ],
    );
    let address = dashboard_address(&procs.procs[index].log);
    (file, address)
}

/// The dashboard's `host:port`, once the process logged its URL.
fn dashboard_address(log: &Path) -> String {
    let mut address = String::new();
    wait_until("the dashboard's URL", LONG, || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("dashboard: http://"))
            .map(|rest| address = rest.trim_end_matches('/').to_owned())
            .is_some()
    });
    address
}

/// `GET path` with optional headers; (status, body), or (0, "") if the
/// server is not there (yet). The body is read by its Content-Length when
/// it has one: Chromium's DevTools keep the connection open.
fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(LONG)).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut reader = std::io::BufReader::new(stream);
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).is_err() {
        return (0, String::new());
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    let read = match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)
        }
        None => reader.read_to_end(&mut body).map(|_| ()),
    };
    if read.is_err() {
        return (0, String::new());
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where tests leave what a person may want to look at (screenshots).
fn artefacts() -> PathBuf {
    let dir = workspace_root().join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A process killed when this goes, also when a test fails half-way.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Headless Chromium driven over the DevTools protocol.
struct Browser {
    _child: Killed,
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    fn launch(profile: &Path) -> Browser {
        let mut child = Killed(
            Command::new("chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1280,1000",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("about:blank")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting chromium (scripts/setup.sh --tests installs it)"),
        );
        // It says where its DevTools listen on stderr.
        let stderr = child.0.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let browser_url = rx.recv_timeout(LONG).expect("chromium's DevTools address");
        let host = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let mut page_url = None;
        wait_until("chromium's page target", LONG, || {
            let (_, body) = http_get(&host, "/json/list", &[]);
            let targets: Json = serde_json::from_str(&body).unwrap_or(json!([]));
            page_url = targets.as_array().and_then(|t| {
                t.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            page_url.is_some()
        });
        let stream = TcpStream::connect(&host).unwrap();
        stream.set_read_timeout(Some(LONG)).unwrap();
        let (socket, _) = tungstenite::client(page_url.unwrap().as_str(), stream).unwrap();
        Browser {
            _child: child,
            socket,
            next_id: 0,
        }
    }

    fn call(&mut self, method: &str, params: Json) -> Json {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(tungstenite::Message::text(message))
            .unwrap();
        loop {
            let answer = self.socket.read().expect("a DevTools answer");
            if let tungstenite::Message::Text(text) = answer {
                let answer: Json = serde_json::from_str(text.as_str()).unwrap();
                if answer["id"] == id {
                    assert!(answer.get("error").is_none(), "{method}: {answer}");
                    return answer["result"].clone();
                }
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Json {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}

#[test]
fn chromium_shows_the_task_stream_both_workers_and_progress_of_a_running_map() {
    let mut procs = Procs::new("dashboard-browser");
    let (file, address) = start_local(&mut procs, 2, 1);
    let client = connect(&file);
    wait_until("2 workers", LONG, || {
        client.status().unwrap().workers.len() == 2
    });
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    // 40 tasks of 50 ms on two threads: about a second, so the page opens
    // while they run.
    let calls = (0..40u64)
        .map(|i| vec![json!(i).into(), json!(50_000).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    let failing = client
        .map(
            &module,
            "fail",
            vec![vec![json!("one").into()], vec![json!("two").into()]],
        )
        .unwrap();
    let mut browser = Browser::launch(&procs.path("chromium"));
    browser.call("Page.enable", json!({}));
    browser.call(
        "Page.navigate",
        json!({"url": format!("http://{address}/")}),
    );
    let facts = "JSON.stringify({\
        bars: document.querySelectorAll('#task-stream rect.bar').length,\
        failed: document.querySelectorAll('#task-stream rect.bar.failed').length,\
        done: [...document.querySelectorAll('#progress tr.progress-row')].map(r => [r.dataset.name, r.dataset.done, r.dataset.total]),\
        workers: [...document.querySelectorAll('#workers tr.worker td:first-child')].map(td => td.textContent).sort(),\
        live: document.getElementById('live').className})";
    let mut shot_while_running = false;
    let started = Instant::now();
    let seen = loop {
        let seen: Json = serde_json::from_str(browser.eval(facts).as_str().unwrap_or("null"))
            .unwrap_or(Json::Null);
        if !shot_while_running && seen["bars"].as_u64().unwrap_or(0) > 0 {
            browser.screenshot(&artefacts().join("dashboard-running.png"));
            shot_while_running = true;
        }
        if seen["done"] == json!([["fail", "0", "2"], ["slow_square", "40", "40"]])
            && seen["bars"] == 42
        {
            break seen;
        }
        assert!(
            started.elapsed() < LONG,
            "the page did not catch up: {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seen["workers"], json!(["local-0", "local-1"]), "{seen}");
    assert_eq!(seen["failed"], 2, "failures are marked: {seen}");
    assert_eq!(seen["live"], "on", "{seen}");
    let shot = artefacts().join("dashboard.png");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    let results = client.gather(&futures).unwrap();
    assert_eq!(results.len(), 40);
    assert!(client.gather(&failing).unwrap().iter().all(Result::is_err));
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_the_completed_count() {
    let mut procs = Procs::new("dashboard-prometheus");
    let (file, address) = start_local(&mut procs, 1, 1);
    let client = connect(&file);
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..50u64)
        .map(|i| vec![json!(i).into(), json!(0).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    client.gather(&futures).unwrap();
    let (status, text) = http_get(&address, "/metrics", &[]);
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("wrun_tasks_completed_total{tenant=\"default\"} 50"),
        "{text}"
    );
    for name in [
        "wrun_scheduler_workers 1",
        "wrun_tasks{state=\"done\",tenant=\"default\"} 50",
        "wrun_task_duration_seconds_count{tenant=\"default\"} 50",
        "wrun_worker_memory_bytes{worker=\"local-0\"}",
        "wrun_worker_held_bytes{worker=\"local-0\"}",
        "wrun_scheduler_loop_lag_seconds",
    ] {
        assert!(text.contains(name), "{name} missing in\n{text}");
    }
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup.sh --tests installs it)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(checked.status.success(), "promtool: {checked:?}");

    let port = free_port();
    let config = procs.path("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: wrun\n    static_configs:\n      - targets: ['{address}']\n"
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{port}");
    procs.start_program(
        "prometheus",
        "prometheus",
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", procs.path("tsdb").display()),
            &format!("--web.listen-address={listen}"),
        ],
    );
    let mut value = String::new();
    wait_until(
        "Prometheus to have scraped 50 completed tasks",
        LONG,
        || {
            if TcpStream::connect(&listen).is_err() {
                return false;
            }
            let (_, body) = http_get(
                &listen,
                "/api/v1/query?query=wrun_tasks_completed_total",
                &[],
            );
            let answer: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
            value = answer["data"]["result"][0]["value"][1]
                .as_str()
                .unwrap_or("")
                .to_owned();
            value == "50"
        },
    );
}

#[test]
fn with_a_tenants_file_the_dashboard_asks_for_a_token_and_shows_each_tenant_its_own() {
    let procs = Procs::new("dashboard-tokens");
    let tenants = procs.path("tenants.toml");
    let add = |name: &str| {
        let out = wrun(&[
            "tenant",
            "add",
            name,
            "--tenants",
            tenants.to_str().unwrap(),
        ]);
        assert_eq!(out.code, Some(0), "{out:?}");
        out.stdout.lines().last().unwrap().to_owned()
    };
    let (alice, bob) = (add("alice"), add("bob"));
    let mut procs = procs;
    let file = procs.path("scheduler.json");
    let index = procs.start(
        "scheduler",
        &[
            "scheduler",
            "--tenants",
            tenants.to_str().unwrap(),
            "--scheduler-file",
            file.to_str().unwrap(),
            "--dashboard",
            "127.0.0.1:0",
        ],
    );
    let address = dashboard_address(&procs.procs[index].log);
    wait_until("the scheduler file", LONG, || file.exists());
    let secret: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let secret = secret["secret"].as_str().unwrap().to_owned();
    // Published within a second of the start.
    wait_until("the first publication", LONG, || {
        http_get(
            &address,
            "/api/snapshot",
            &[("Authorization", &format!("Bearer {secret}"))],
        )
        .0 == 200
    });
    let (status, page) = http_get(&address, "/", &[]);
    assert_eq!(status, 401);
    assert!(page.contains("asks for a token"), "{page}");
    assert_eq!(http_get(&address, "/api/snapshot", &[]).0, 401);
    let (status, page) = http_get(&address, "/?token=not-a-token", &[]);
    assert_eq!(status, 401);
    assert!(page.contains("not one of this cluster"), "{page}");
    assert!(
        !page.contains("not-a-token"),
        "a token is never echoed: {page}"
    );
    // A tenant's token becomes a cookie, and the address bar loses it.
    let (status, _) = http_get(&address, &format!("/?token={alice}"), &[]);
    assert_eq!(status, 303);
    let cookie = format!("wrun_token={alice}");
    assert_eq!(http_get(&address, "/", &[("Cookie", &cookie)]).0, 200);
    let (status, metrics) = http_get(&address, "/metrics", &[("Cookie", &cookie)]);
    assert_eq!(status, 403, "{metrics}");
    let (status, _) = http_get(
        &address,
        "/metrics",
        &[("Authorization", &format!("Bearer {secret}"))],
    );
    assert_eq!(status, 200);

    procs.start(
        "worker",
        &[
            "worker",
            "--scheduler-file",
            file.to_str().unwrap(),
            "--no-nanny",
        ],
    );
    // Bob's tasks are not in Alice's view.
    let bob_client = Client::connect_with(
        &Target::File(file.clone()),
        wrun_client::Credentials {
            token: Some(bob.clone()),
            certificate: None,
        },
        LONG,
    )
    .unwrap();
    let module = bob_client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..3u64)
        .map(|i| vec![json!(i).into(), json!(0).into()])
        .collect();
    let _futures = bob_client.map(&module, "slow_square", calls).unwrap();
    let view = |token: &str| -> Json {
        let (_, body) = http_get(
            &address,
            "/api/snapshot",
            &[("Authorization", &format!("Bearer {token}"))],
        );
        serde_json::from_str(&body).unwrap()
    };
    wait_until("bob's view to count his 3 tasks", LONG, || {
        view(&bob)["view"]["status"]["tasks"]["total"] == 3
    });
    let alices = view(&alice);
    assert_eq!(alices["view"]["status"]["tasks"]["total"], 0, "{alices}");
    assert_eq!(alices["view"]["progress"], json!([]), "{alices}");
    wait_until("bob's 3 runs in his view", LONG, || {
        view(&bob)["records"]
            .as_array()
            .is_some_and(|r| r.len() == 3)
    });
    assert_eq!(view(&alice)["records"], json!([]), "no trace of bob's runs");
    assert_eq!(view(&secret)["view"]["status"]["tasks"]["total"], 3);
}

#[test]
fn events_report_and_graph_draw_what_ran_and_what_a_graph_file_holds() {
    let mut procs = Procs::new("dashboard-pictures");
    let (file, _) = start_local(&mut procs, 2, 1);
    let file_arg = file.to_str().unwrap();
    let args: Vec<String> = (0..20).map(|i| format!("[{i}, 1000]")).collect();
    let mut submit = vec![
        "submit",
        "--scheduler-file",
        file_arg,
        TEST_GUESTS_WASM,
        "slow_square",
        "--map",
        "--detach",
    ];
    submit.extend(args.iter().map(String::as_str));
    let out = wrun(&submit);
    assert_eq!(out.code, Some(0), "{out:?}");
    let job = out.stdout.trim().to_owned();
    let mut lines = Vec::new();
    wait_until("the job's 20 runs", LONG, || {
        let out = wrun(&["events", &job, "--json", "--scheduler-file", file_arg]);
        lines = out.stdout.lines().map(str::to_owned).collect();
        out.code == Some(0) && lines.len() == 20
    });
    let mut keys = Vec::new();
    for line in &lines {
        let run: Json = serde_json::from_str(line).unwrap();
        assert_eq!(run["name"], "slow_square", "{run}");
        assert_eq!(run["status"], "done", "{run}");
        assert!(run["bytes"].as_u64().unwrap() > 0, "{run}");
        assert!(
            ["local-0", "local-1"].contains(&run["worker"].as_str().unwrap()),
            "{run}"
        );
        let (start, end) = (
            run["start_us"].as_u64().unwrap(),
            run["end_us"].as_u64().unwrap(),
        );
        assert!(
            end >= start + 1000,
            "a 1 ms task took {} µs: {run}",
            end - start
        );
        keys.push(run["task"].as_u64().unwrap());
    }
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 20);
    let report = procs.path("report.html");
    let out = wrun(&[
        "report",
        &job,
        "-o",
        report.to_str().unwrap(),
        "--scheduler-file",
        file_arg,
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert_eq!(html.matches("<rect class=\"bar\"").count(), 20, "{html}");
    assert!(
        !html.contains("<script") && !html.contains("src=") && !html.contains("href="),
        "self-contained"
    );
    // The job is still there to gather.
    let out = wrun(&["gather", &job, "--scheduler-file", file_arg]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 20);
    let out = wrun(&["events", "job-nope", "--scheduler-file", file_arg]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no job `job-nope`"), "{out:?}");

    // The seed graph: one node per task and one edge per dependency.
    let graph_file = workspace_root().join("examples/graphs/seed-graph.toml");
    let graph: toml::Table =
        toml::from_str(&std::fs::read_to_string(&graph_file).unwrap()).unwrap();
    let tasks = graph["tasks"].as_table().unwrap();
    let dependencies: usize = tasks
        .values()
        .map(|t| {
            let mut refs: Vec<&str> = t["args"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|a| a.get("ref").and_then(|r| r.as_str()))
                .collect();
            refs.sort_unstable();
            refs.dedup();
            refs.len()
        })
        .sum();
    let svg_path = procs.path("graph.svg");
    let out = wrun(&[
        "graph",
        graph_file.to_str().unwrap(),
        "-o",
        svg_path.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the SVG is XML");
    let class = |c: &str| {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(c))
            .count()
    };
    assert_eq!(class("node"), tasks.len());
    assert_eq!(class("edge"), dependencies);
    assert!(svg.contains("x0: inc"), "labelled with id and task name");
    let out = wrun(&["graph", graph_file.to_str().unwrap(), "--format", "dot"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout.matches(" -> ").count(), dependencies);
    let out = wrun(&["graph", "/nonexistent.toml"]);
    assert_eq!(out.code, Some(2), "{out:?}");
}

#[test]
fn a_bad_or_taken_dashboard_address_is_refused_by_name() {
    let out = wrun(&["scheduler", "--dashboard", "nonsense"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("`nonsense` is not HOST:PORT"),
        "{out:?}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = wrun(&["scheduler", "--dashboard", &address]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot serve the dashboard on {address}")),
        "{out:?}"
    );
}
