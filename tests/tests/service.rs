//! The middle tier: the real scheduler, workers and client in this test
//! process, on loopback (wrun-local's embedded cluster), so the service's
//! behaviour is tested without spawning binaries: batches split to fit,
//! refusals named precisely, retirement losing nothing, detached jobs
//! moving between sessions.

use std::time::Duration;

use serde_json::json;
use wrun_client::{Client, Module};
use wrun_local::{EmbeddedCluster, EmbeddedConfig};
use wrun_sandbox::SandboxConfig;
use wrun_tests::{SEED_TASKS_WASM, TEST_GUESTS_WASM, read_module, within};
use wrun_worker::Departure;

const WAIT: Duration = Duration::from_secs(60);

fn cluster(workers: u32) -> EmbeddedCluster {
    let cache = std::env::temp_dir().join(format!("wrun-service-cache-{}", std::process::id()));
    let cluster = EmbeddedCluster::start(EmbeddedConfig {
        workers,
        threads: 1,
        sandbox: SandboxConfig {
            cache_dir: Some(cache),
            ..SandboxConfig::default()
        },
        ..EmbeddedConfig::default()
    })
    .expect("starting an embedded cluster");
    cluster
        .wait_for_workers(workers as usize, WAIT)
        .expect("workers registered");
    cluster
}

fn seed(client: &Client) -> Module {
    client.upload(&read_module(SEED_TASKS_WASM)).unwrap()
}

#[test]
fn maps_larger_than_a_message_are_split_and_come_back_whole_and_in_order() {
    let cluster = cluster(2);
    let client = cluster.client().unwrap();
    let module = seed(&client);
    // 25,000 calls: more than one message holds (10,000 per message).
    let calls = (0..25_000i64).map(|i| vec![json!(i).into()]).collect();
    let futures = client.map(&module, "inc", calls).unwrap();
    let results = client.gather(&futures).unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &json!(i as i64 + 1), "inc({i})");
    }
    // 3,000 literals of 8 KB: more bytes than one message holds.
    let list = json!(vec![1_000_000i64; 1000]);
    let calls = (0..3000).map(|_| vec![list.clone().into()]).collect();
    let sums = client.map(&module, "do_analysis", calls).unwrap();
    for result in client.gather(&sums).unwrap() {
        assert_eq!(result.unwrap(), json!(1_000_000_000i64));
    }
    let status = client.status().unwrap();
    assert_eq!(status.tasks.failed, 0, "{status:?}");
}

#[test]
fn the_scheduler_refuses_bad_submissions_by_name_and_keeps_serving() {
    let cluster = cluster(1);
    let client = cluster.client().unwrap();
    let module = seed(&client);
    let unknown = Module {
        digest: wrun_abi::ModuleDigest([7; 32]),
        tasks: module.tasks.clone(),
    };
    let error = client
        .submit(&unknown, "inc", vec![json!(1).into()])
        .unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("unknown module digest 0707070707070707070707070707070707070707070707070707070707070707; upload it first"),
        "{error}"
    );
    // A client that lies about a signature is caught by the scheduler.
    let mut lying = module.tasks.as_ref().clone();
    lying.iter_mut().find(|t| t.name == "inc").unwrap().params[0].ty = wrun_abi::Type::String;
    let lying = Module {
        digest: module.digest,
        tasks: std::sync::Arc::new(lying),
    };
    let error = client
        .submit(&lying, "inc", vec![json!("one").into()])
        .unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("argument `x` of task `inc`: expected i64, got string \"one\""),
        "{error}"
    );
    let error = client.adopt("no-such-job").unwrap_err();
    assert_eq!(
        error.to_string(),
        "no job `no-such-job`; the scheduler has: none"
    );
    // Nothing of the refused submissions stayed behind; the cluster serves.
    assert_eq!(client.status().unwrap().tasks.total, 0);
    let x = client
        .submit(&module, "inc", vec![json!(41).into()])
        .unwrap();
    assert_eq!(
        client.gather(&[x]).unwrap()[0].as_ref().unwrap(),
        &json!(42)
    );
}

#[test]
fn a_retiring_worker_hands_its_results_over_and_nothing_is_recomputed() {
    let mut cluster = cluster(2);
    let client = cluster.client().unwrap();
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..40u64)
        .map(|i| vec![json!(i).into(), json!(1000).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    client.wait(&futures).unwrap();
    // Both workers hold results now; one of them leaves.
    assert_eq!(cluster.retire_worker(0).unwrap(), Departure::Retired);
    let status = client.status().unwrap();
    assert_eq!(status.workers.len(), 1, "{status:?}");
    let results = client.gather(&futures).unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &json!(i * i), "result {i}");
    }
    assert_eq!(client.status().unwrap().recomputed, 0);
}

#[test]
fn a_detached_job_outlives_its_session_and_another_gathers_or_cancels_it() {
    let cluster = cluster(2);
    let job = {
        let submitter = cluster.client().unwrap();
        let module = seed(&submitter);
        let calls = (0..100i64).map(|i| vec![json!(i).into()]).collect();
        let futures = submitter.map(&module, "double", calls).unwrap();
        submitter.detach(futures, "").unwrap()
    };
    assert!(job.starts_with("job-"), "{job}");
    let other = cluster.client().unwrap();
    let status = other.status().unwrap();
    assert_eq!(status.jobs.len(), 1, "{status:?}");
    assert_eq!(
        (status.jobs[0].name.as_str(), status.jobs[0].tasks),
        (job.as_str(), 100)
    );
    let futures = other.adopt(&job).unwrap();
    let results = other.gather(&futures).unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &json!(2 * i as i64));
    }
    drop(futures);
    // A second job, cancelled from a third session: nothing stays.
    let guests = other.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let forever = other.map(&guests, "spin_forever", vec![vec![]; 3]).unwrap();
    let name = other.detach(forever, "forever").unwrap();
    let third = cluster.client().unwrap();
    let doomed = third.adopt(&name).unwrap();
    third.cancel(doomed).unwrap();
    wrun_tests::wait_until("the cancelled job to be gone", WAIT, || {
        let status = third.status().unwrap();
        status.jobs.is_empty() && status.tasks.total == 0
    });
}

#[test]
fn cancelling_a_task_that_sleeps_in_the_host_frees_its_thread() {
    let cluster = cluster(1);
    let client = cluster.client().unwrap();
    let guests = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let napping = client
        .submit(&guests, "nap", vec![json!(600).into()])
        .unwrap();
    wrun_tests::wait_until("the nap to run", WAIT, || {
        client.status().unwrap().tasks.running == 1
    });
    let started = std::time::Instant::now();
    client.cancel(vec![napping]).unwrap();
    // The only thread is free again at once.
    let module = seed(&client);
    let x = client
        .submit(&module, "inc", vec![json!(1).into()])
        .unwrap();
    assert_eq!(client.gather(&[x]).unwrap()[0].as_ref().unwrap(), &json!(2));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn tasks_with_large_literals_that_become_ready_together_reach_the_worker_in_messages_that_fit() {
    let cluster = cluster(1);
    let client = cluster.client().unwrap();
    let module = seed(&client);
    let before: Vec<u64> = client
        .status()
        .unwrap()
        .workers
        .iter()
        .map(|w| w.id)
        .collect();
    // The one thread is busy, the dependency waits behind it, and six
    // tasks with 6 MiB literals wait on the dependency: they become ready
    // at once, 36 MiB for one worker, more than one message may carry.
    let busy = client
        .submit(&module, "spin", vec![json!(300_000).into()])
        .unwrap();
    let dependency = client
        .submit(
            &module,
            "produce",
            vec![json!(1000).into(), json!(1).into()],
        )
        .unwrap();
    let literal = json!("x".repeat(6 << 20));
    let consumers: Vec<_> = (0..6)
        .map(|_| {
            client
                .submit(
                    &module,
                    "consume",
                    vec![literal.clone().into(), (&dependency).into()],
                )
                .unwrap()
        })
        .collect();
    // Before the batches were split, the worker was dropped and the batch
    // sent again for ever: bound the wait so that would fail, not hang.
    let (client, results) = within("the six consumers", Duration::from_secs(60), move || {
        let results = client.gather(&consumers).unwrap();
        (client, results)
    });
    for result in results {
        assert_eq!(result.unwrap(), json!((6 << 20) + 1000));
    }
    client.wait(&[busy]).unwrap();
    let status = client.status().unwrap();
    let after: Vec<u64> = status.workers.iter().map(|w| w.id).collect();
    assert_eq!(before, after, "the worker was never dropped: {status:?}");
    assert_eq!(status.recomputed, 0, "{status:?}");
    // Literals too large for one message travel in chunks (putValue), and
    // the task runs.
    let both = client
        .submit(
            &module,
            "consume",
            vec![literal.clone().into(), json!("y".repeat(7 << 20)).into()],
        )
        .unwrap();
    assert_eq!(
        client.gather(&[both]).unwrap()[0].as_ref().unwrap(),
        &json!((6 << 20) + (7 << 20))
    );
}

#[test]
fn captured_output_larger_than_a_message_is_refused_and_large_output_arrives_whole() {
    let cluster = cluster(1);
    let mut client = cluster.client().unwrap();
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let with_stdout = |bytes: u64| wrun_client::TaskOptions {
        limits: wrun_client::TaskLimits {
            stdout_bytes: bytes,
            ..wrun_client::TaskLimits::DEFAULT
        },
        retries: 0,
    };
    client.set_options(with_stdout(18 << 20));
    let error = client
        .submit(&module, "flood_stdout", vec![json!(18).into()])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "a stdout capture limit of 18 MiB cannot travel in one message (at most 4 MiB)"
        ),
        "{error}"
    );
    // Six tasks that each print their whole 4 MiB allowance: the worker's
    // events are split to fit, and every log comes back whole.
    client.set_options(with_stdout(4 << 20));
    let futures = client
        .map(
            &module,
            "flood_stdout",
            (0..6).map(|_| vec![json!(4).into()]).collect(),
        )
        .unwrap();
    for result in client.gather(&futures).unwrap() {
        assert_eq!(result.unwrap(), json!(4 << 20));
    }
    for future in &futures {
        let (stdout, _) = client.logs(future).unwrap();
        assert_eq!(stdout.len(), 4 << 20);
    }
    assert_eq!(client.status().unwrap().workers.len(), 1);
}

#[test]
fn a_result_larger_than_a_chunk_is_gathered_through_the_scheduler_whole() {
    let cluster = cluster(1);
    let client = cluster.client().unwrap();
    let module = seed(&client);
    // Over two 8 MiB chunks: the client reads it through the scheduler.
    let size = (16 << 20) + 3;
    let future = client
        .submit(
            &module,
            "produce",
            vec![json!(size).into(), json!(5).into()],
        )
        .unwrap();
    let raw = client.gather_raw(&[future]).unwrap().remove(0).unwrap();
    // MessagePack bin 32: 0xc6, four bytes of length, the bytes.
    assert_eq!(raw.len(), size + 5);
    assert_eq!(&raw[..5], &[0xc6, 0x01, 0x00, 0x00, 0x03]);
}
