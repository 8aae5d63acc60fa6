use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::gateway::meter::InMemoryMeterStore;

fn now() -> jiff::Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn grant() -> Arc<Grant> {
    Arc::new(crate::gateway::model::tests::grant_with(
        crate::gateway::registry::tests::facts(),
    ))
}

fn tranche(reserved: u64, seq: u64) -> Tranche {
    Tranche {
        reserved_micros: reserved,
        seq,
        since: now().to_string(),
    }
}

fn batch(cost: u64, requests: u32) -> Settled {
    Settled {
        cost_micros: cost,
        requests,
        ..Settled::default()
    }
}

/// The shared record in memory, with faults the tests turn on: writes held
/// until the gate opens, and writes that are applied but answered with an
/// error (a timeout after the apiserver committed).
#[derive(Default)]
struct TestLedger {
    store: InMemoryMeterStore,
    gate: tokio::sync::RwLock<()>,
    lose_answers: AtomicU32,
    updates: AtomicU32,
}

impl Ledger for TestLedger {
    fn update<'a, T: Send + 'a>(
        &'a self,
        secret_name: &'a str,
        change: impl FnMut(&mut Meter, bool) -> Result<T, MeterError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, MeterError>> {
        Box::pin(async move {
            let _open = self.gate.read().await;
            self.updates.fetch_add(1, Ordering::SeqCst);
            let out = self.store.update(secret_name, change).await?;
            let lost = self
                .lose_answers
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lost {
                return Err(MeterError::Store("the answer was lost".into()));
            }
            Ok(out)
        })
    }
}

/// Records on the shared meter that the run spent `micros` in `requests` already.
async fn already_spent(ledger: &TestLedger, g: &Grant, micros: u64, requests: u32) {
    ledger
        .store
        .update(&g.secret_name, |m, _| {
            m.spent_micros = micros;
            m.requests = requests;
            Ok(())
        })
        .await
        .unwrap();
}

fn replica(ledger: &Arc<TestLedger>, name: &str) -> TrancheMeter<Arc<TestLedger>> {
    TrancheMeter::new(ledger.clone(), incarnation(name))
}

/// The grant Secret as a watch would deliver it: the shared meter and
/// whether the grant is closed.
fn secret_of(ledger: &TestLedger, name: &str, closed: bool) -> Secret {
    let meter = ledger.store.meter(name);
    let mut annotations = std::collections::BTreeMap::from([(
        crate::grant::ANNOTATION_METER.to_owned(),
        serde_json::to_string(&meter).unwrap(),
    )]);
    if closed {
        annotations.insert(crate::grant::ANNOTATION_CLOSED.to_owned(), now().to_string());
    }
    let mut s = Secret::default();
    s.metadata.name = Some(name.to_owned());
    s.metadata.annotations = Some(annotations);
    s
}

/// Plays the grant watch for `replicas` until dropped: every few
/// milliseconds each is shown the grant Secret as it is now.
fn watch(
    ledger: &Arc<TestLedger>,
    name: &str,
    replicas: Vec<Arc<TrancheMeter<Arc<TestLedger>>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (ledger, name) = (ledger.clone(), name.to_owned());
    tokio::spawn(async move {
        loop {
            let secret = secret_of(&ledger, &name, closed.load(Ordering::SeqCst));
            for r in &replicas {
                r.observe(&secret, false);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

#[test]
fn a_settled_batch_moves_its_cost_from_the_tranche_to_spent_once() {
    let mut m = Meter::default();
    m.tranches.insert("a".into(), tranche(1_000, 0));
    let mut b = batch(300, 2);
    b.usage.insert(
        "m".into(),
        ModelUsage {
            input_tokens: 10,
            ..ModelUsage::default()
        },
    );
    b.last_tool = Some("Bash".into());
    apply_settled(&mut m, "a", 1, &b);
    assert_eq!(
        (m.spent_micros, m.requests, m.tranches["a"].reserved_micros),
        (300, 2, 700)
    );
    assert_eq!(m.usage["m"].input_tokens, 10);
    assert_eq!(m.last_tool.as_deref(), Some("Bash"));
    // The same batch again (a retried write): nothing changes.
    let before = m.clone();
    apply_settled(&mut m, "a", 1, &b);
    assert_eq!(m, before);
    // The next one applies; the worst case never moved while cost was spent.
    apply_settled(&mut m, "a", 2, &batch(100, 1));
    assert_eq!((m.spent_micros, m.tranches["a"].reserved_micros), (400, 600));
    assert_eq!(m.worst_case_micros(), 1_000);
    // A batch costing more than the tranche holds is still spent in full.
    apply_settled(&mut m, "a", 3, &batch(900, 1));
    assert_eq!((m.spent_micros, m.tranches["a"].reserved_micros), (1_300, 0));
    // A holder with no tranche (budget never taken) is charged too.
    apply_settled(&mut m, "b", 1, &batch(50, 1));
    assert_eq!(m.spent_micros, 1_350);
}

#[test]
fn a_take_is_what_is_needed_and_at_most_half_of_the_rest_while_others_may_want_it() {
    // spent, held by others, need, want, cap, others wait => taken or Err(free)
    type Case = (u64, u64, u64, u64, u64, bool, Result<u64, u64>);
    let cases: &[Case] = &[
        (0, 0, 100, 400, 1_000, false, Ok(400)),
        (0, 0, 100, 2_000, 1_000, false, Ok(550)),
        (0, 600, 100, 400, 1_000, false, Ok(250)),
        (900, 0, 100, 400, 1_000, false, Ok(100)),
        (900, 0, 101, 400, 1_000, false, Err(100)),
        (0, 0, 100, 400, 1_000, true, Ok(100)),
        (0, 0, 0, 400, 1_000, false, Ok(400)),
        (0, 1_000, 0, 400, 1_000, false, Ok(0)),
        (2_000, 0, 1, 1, 1_000, false, Err(0)),
    ];
    for (i, &(spent, others, need, want, cap, waiting, expected)) in cases.iter().enumerate() {
        let mut m = Meter {
            spent_micros: spent,
            requests: 1,
            ..Meter::default()
        };
        if others > 0 {
            m.tranches.insert("b".into(), tranche(others, 0));
        }
        if waiting {
            m.wants.insert("b".into(), now().to_string());
        }
        m.wants.insert("a".into(), now().to_string());
        // A wait long past (its replica died waiting) counts for nothing.
        m.wants.insert("dead".into(), "2025-12-31T23:59:00Z".into());
        let got = take(&mut m, "a", need, want, cap, now());
        match expected {
            Ok(n) => {
                assert_eq!(
                    got,
                    Ok(Taken {
                        micros: n,
                        first: false
                    }),
                    "case {i}"
                );
                assert!(m.worst_case_micros() <= cap.max(spent), "case {i}");
                assert!(!m.wants.contains_key("a"), "case {i}: a no longer waits");
            }
            Err(free) => {
                assert_eq!(
                    got,
                    Err(MeterError::Insufficient { remaining_micros: free }),
                    "case {i}"
                );
                assert!(!m.tranches.contains_key("a"), "case {i}");
            }
        }
    }
}

#[test]
fn only_the_runs_first_take_is_first() {
    let mut m = Meter::default();
    assert!(take(&mut m, "a", 10, 10, 1_000, now()).unwrap().first);
    assert!(!take(&mut m, "b", 10, 10, 1_000, now()).unwrap().first);
    assert!(!take(&mut m, "a", 10, 10, 1_000, now()).unwrap().first);
    // Given back to nothing, the entry remains: still not first.
    give_back(&mut m, "a", 1_000);
    give_back(&mut m, "b", 1_000);
    assert_eq!(m.worst_case_micros(), 0);
    assert_eq!(m.open(), 0);
    assert!(!take(&mut m, "c", 10, 10, 1_000, now()).unwrap().first);
}

#[tokio::test]
async fn requests_served_from_the_tranche_wait_for_no_write() {
    let ledger = Arc::new(TestLedger::default());
    let a = replica(&ledger, "gw-a");
    let g = grant();
    // The first request takes a tranche: one write, sized for several requests.
    let first = a.reserve(&g, "r0", 100, 10_000).await.unwrap();
    assert!(first.first);
    a.settle(&g, "r0", "m", &ModelUsage::default(), 40, None).await.unwrap();
    a.flushed().await;
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!(m.tranches[a.holder()].reserved_micros, 400 - 40);
    assert_eq!((m.spent_micros, m.requests), (40, 1));

    // With every write held, the next requests are still reserved and settled.
    let held = ledger.gate.write().await;
    for i in 1..=6 {
        let id = format!("r{i}");
        let r = tokio::time::timeout(Duration::from_secs(10), a.reserve(&g, &id, 100, 10_000))
            .await
            .expect("a reservation from the tranche waits for no write")
            .unwrap();
        assert!(!r.first);
        a.settle(&g, &id, "m", &ModelUsage::default(), 40, None).await.unwrap();
    }
    drop(held);
    a.flushed().await;
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!((m.spent_micros, m.requests), (280, 7));
    assert!(m.worst_case_micros() <= 10_000);
    // Without a renewal 120 would be left; it was renewed in the background
    // before it ran out.
    assert!(m.tranches[a.holder()].reserved_micros >= 300, "{m:?}");
}

#[tokio::test]
async fn two_replicas_hold_the_cap_under_concurrent_requests_and_charge_each_once() {
    let ledger = Arc::new(TestLedger::default());
    let replicas = [Arc::new(replica(&ledger, "gw-a")), Arc::new(replica(&ledger, "gw-b"))];
    let g = grant();
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch(&ledger, &g.secret_name, replicas.to_vec(), closed.clone());
    // What the run could cost right now: settled costs plus the worst case
    // of every request in flight on either replica. Never above the cap.
    let exposure = Arc::new(std::sync::Mutex::new(0u64));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (r, g, ledger, exposure) = (replicas[i % 2].clone(), g.clone(), ledger.clone(), exposure.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("r{i}");
            let ok = r.reserve(&g, &id, 100, 2_000).await.is_ok();
            if ok {
                let mut e = exposure.lock().unwrap();
                *e += 100;
                assert!(*e <= 2_000, "exposure {e}");
            }
            // Never more reserved or held than the cap on the record either.
            assert!(ledger.store.meter(&g.secret_name).worst_case_micros() <= 2_000);
            if ok {
                tokio::task::yield_now().await;
                // Every third request costs its whole worst case.
                let cost = if i % 3 == 0 { 100 } else { 30 };
                *exposure.lock().unwrap() -= 100 - cost;
                r.settle(&g, &id, "m", &ModelUsage::default(), cost, None)
                    .await
                    .unwrap();
            }
            ok.then_some(if i % 3 == 0 { 100 } else { 30 })
        }));
    }
    let (mut served, mut spent) = (0u64, 0u64);
    for t in tasks {
        if let Some(cost) = t.await.unwrap() {
            served += 1;
            spent += cost;
        }
    }
    assert!(served >= 20, "at least cap / worst case fit: {served}");
    for r in &replicas {
        r.flushed().await;
    }
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!(m.spent_micros, spent, "{m:?}");
    assert_eq!(u64::from(m.requests), served);
    assert!(m.worst_case_micros() <= 2_000);

    // The run ends: both give their tranches back; only what was spent stays.
    closed.store(true, Ordering::SeqCst);
    for r in &replicas {
        tokio::time::timeout(Duration::from_secs(10), async {
            while r.inner.lock().contains_key(&g.secret_name) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the tranche went back");
    }
    watcher.abort();
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!(m.open(), 0, "{m:?}");
    assert_eq!(m.worst_case_micros(), spent);
}

#[tokio::test]
async fn two_replicas_racing_for_the_last_tranche_get_it_once() {
    let ledger = Arc::new(TestLedger::default());
    let (a, b) = (replica(&ledger, "gw-a"), replica(&ledger, "gw-b"));
    let g = grant();
    // $0.0009 of a $0.001 cap is spent: one request of 80 fits, not two.
    already_spent(&ledger, &g, 900, 5).await;
    let (ra, rb) = tokio::join!(a.reserve(&g, "ra", 80, 1_000), b.reserve(&g, "rb", 80, 1_000));
    let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{ra:?} {rb:?}");
    let lost = if ra.is_ok() { rb } else { ra };
    // The loser is told what it could still have (to clamp to), no more.
    match lost {
        Err(MeterError::Insufficient { remaining_micros }) => assert!(remaining_micros <= 20, "{remaining_micros}"),
        other => panic!("{other:?}"),
    }
    let m = ledger.store.meter(&g.secret_name);
    assert!(m.worst_case_micros() <= 1_000, "{m:?}");
    assert!(m.wants.is_empty(), "the loser no longer waits: {m:?}");
}

#[tokio::test]
async fn a_replica_waiting_for_budget_gets_what_another_holds_unused() {
    let ledger = Arc::new(TestLedger::default());
    let (a, b) = (Arc::new(replica(&ledger, "gw-a")), Arc::new(replica(&ledger, "gw-b")));
    let g = grant();
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch(&ledger, &g.secret_name, vec![a.clone(), b.clone()], closed);
    // a takes a tranche for four requests of 200 out of 1000, then is idle.
    a.reserve(&g, "ra", 200, 1_000).await.unwrap();
    a.settle(&g, "ra", "m", &ModelUsage::default(), 100, None)
        .await
        .unwrap();
    a.flushed().await;
    let held = ledger.store.meter(&g.secret_name).tranches[a.holder()].reserved_micros;
    assert!(held >= 400, "{held}");
    // b needs 700: only what a does not use can cover it.
    let r = b.reserve(&g, "rb", 700, 1_000).await;
    assert!(r.is_ok(), "{r:?}");
    watcher.abort();
    let m = ledger.store.meter(&g.secret_name);
    assert!(m.worst_case_micros() <= 1_000, "{m:?}");
    assert!(m.wants.is_empty(), "{m:?}");
}

#[tokio::test]
async fn a_request_waiting_for_budget_is_served_by_what_settles_here_meanwhile() {
    let ledger = Arc::new(TestLedger::default());
    let (a, b) = (Arc::new(replica(&ledger, "gw-a")), replica(&ledger, "gw-b"));
    let g = grant();
    // a holds 1500 of 2000 with one request of 1000 in flight; b holds 375.
    a.reserve(&g, "r1", 1_000, 2_000).await.unwrap();
    b.reserve(&g, "rb", 250, 2_000).await.unwrap();
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!(m.tranches[a.holder()].reserved_micros, 1_500, "{m:?}");
    assert_eq!(free_micros(&m, 2_000), 125, "{m:?}");
    // A second request of 1000 does not fit what a has free (500) nor the
    // meter: it waits for b (never shown the want here) to give budget back.
    let waiting = tokio::spawn({
        let (a, g) = (a.clone(), g.clone());
        async move { a.reserve(&g, "r2", 1_000, 2_000).await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while !ledger.store.meter(&g.secret_name).wants.contains_key(a.holder()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the request waits for budget");
    // The first settles cheaply: a's own tranche now covers the second.
    a.settle(&g, "r1", "m", &ModelUsage::default(), 100, None)
        .await
        .unwrap();
    let r2 = waiting.await.unwrap();
    assert!(r2.is_ok(), "served from the tranche, not refused: {r2:?}");
    a.flushed().await;
    let m = ledger.store.meter(&g.secret_name);
    assert!(m.worst_case_micros() <= 2_000, "{m:?}");
}

#[tokio::test]
async fn a_killed_replica_leaves_its_tranche_charged_and_nothing_counted_twice() {
    let ledger = Arc::new(TestLedger::default());
    let (a, b) = (replica(&ledger, "gw-a"), replica(&ledger, "gw-b"));
    let g = grant();
    // a serves two requests; the write of its first batch is committed but
    // its answer lost, so a writes the batch again.
    a.reserve(&g, "a1", 100, 1_000).await.unwrap();
    ledger.lose_answers.store(1, Ordering::SeqCst);
    a.settle(&g, "a1", "m", &ModelUsage::default(), 60, None).await.unwrap();
    a.flushed().await;
    a.reserve(&g, "a2", 100, 1_000).await.unwrap();
    a.settle(&g, "a2", "m", &ModelUsage::default(), 60, None).await.unwrap();
    a.flushed().await;
    assert_eq!(ledger.lose_answers.load(Ordering::SeqCst), 0, "an answer was lost");
    // A third is in flight when a is killed.
    a.reserve(&g, "a3", 100, 1_000).await.unwrap();
    a.flushed().await;
    let before = ledger.store.meter(&g.secret_name);
    assert_eq!((before.spent_micros, before.requests), (120, 2), "{before:?}");
    let a_holder = a.holder().to_owned();
    let held = before.tranches[&a_holder].reserved_micros;
    assert!(held >= 100, "a's tranche covers what it has in flight: {held}");
    a.kill();
    drop(a);

    // b serves what is left beside a's tranche, never into it.
    let mut served = 0u64;
    for i in 0..20 {
        let id = format!("b{i}");
        match b.reserve(&g, &id, 100, 1_000).await {
            Ok(_) => {
                b.settle(&g, &id, "m", &ModelUsage::default(), 100, None).await.unwrap();
                served += 1;
            }
            Err(MeterError::Insufficient { .. }) => break,
            Err(other) => panic!("{other}"),
        }
    }
    b.flushed().await;
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!(m.tranches[&a_holder].reserved_micros, held, "a's tranche untouched");
    assert_eq!(m.spent_micros, 120 + 100 * served);
    assert_eq!(u64::from(m.requests), 2 + served);
    // What the run is charged at its end: spent plus a's tranche, within the cap.
    assert!(m.worst_case_micros() <= 1_000, "{m:?}");
    assert_eq!(m.worst_case_micros(), 120 + 100 * served + held + b_held(&m, &b));
    assert!(served >= 1);
}

fn b_held(m: &Meter, b: &TrancheMeter<Arc<TestLedger>>) -> u64 {
    m.tranches.get(b.holder()).map(|t| t.reserved_micros).unwrap_or(0)
}

#[tokio::test]
async fn a_closed_run_refuses_new_requests_and_gets_its_tranche_back_after_the_last_settles() {
    let ledger = Arc::new(TestLedger::default());
    let a = replica(&ledger, "gw-a");
    let g = grant();
    a.reserve(&g, "r1", 100, 1_000).await.unwrap();
    ledger.store.close(&g.secret_name);
    a.observe(&secret_of(&ledger, &g.secret_name, true), false);
    assert_eq!(a.reserve(&g, "r2", 1, 1_000).await, Err(MeterError::Closed));
    a.flushed().await;
    // The request in flight keeps the tranche until it settles.
    assert!(ledger.store.meter(&g.secret_name).open() > 0);
    a.settle(&g, "r1", "m", &ModelUsage::default(), 70, None).await.unwrap();
    a.flushed().await;
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!((m.spent_micros, m.requests, m.open()), (70, 1, 0), "{m:?}");
    assert_eq!(m.worst_case_micros(), 70);
}

#[tokio::test]
async fn a_stopping_replica_gives_back_what_it_holds() {
    let ledger = Arc::new(TestLedger::default());
    let a = replica(&ledger, "gw-a");
    let g = grant();
    a.reserve(&g, "r1", 100, 1_000).await.unwrap();
    a.settle(&g, "r1", "m", &ModelUsage::default(), 30, None).await.unwrap();
    a.release_all().await;
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!((m.worst_case_micros(), m.open(), m.requests), (30, 0, 1), "{m:?}");
    assert!(matches!(a.reserve(&g, "r2", 1, 1_000).await, Err(MeterError::Store(_))));
}

#[tokio::test]
async fn a_replica_never_reserves_beyond_its_tranche() {
    let ledger = Arc::new(TestLedger::default());
    let (a, b) = (replica(&ledger, "gw-a"), replica(&ledger, "gw-b"));
    let g = grant();
    already_spent(&ledger, &g, 500, 1).await;
    // a takes 300 of the 500 left (100 needed, half of the rest besides),
    // b the last 200.
    a.reserve(&g, "a1", 100, 1_000).await.unwrap();
    b.reserve(&g, "b1", 200, 1_000).await.unwrap();
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!(m.tranches[a.holder()].reserved_micros, 300, "{m:?}");
    assert_eq!(free_micros(&m, 1_000), 0, "{m:?}");
    // a serves two more from its tranche, then has nothing left to serve from.
    a.reserve(&g, "a2", 100, 1_000).await.unwrap();
    a.reserve(&g, "a3", 100, 1_000).await.unwrap();
    assert_eq!(
        a.reserve(&g, "a4", 1, 1_000).await,
        Err(MeterError::Insufficient { remaining_micros: 0 })
    );
    let m = ledger.store.meter(&g.secret_name);
    assert_eq!(m.worst_case_micros(), 1_000, "{m:?}");
}
