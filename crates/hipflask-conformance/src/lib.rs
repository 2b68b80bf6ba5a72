//! One suite that every [`Store`] must pass.
//!
//! A store's own test calls [`run`] with a fresh store; every check uses
//! new random ids, so stores shared with other tests (a Redis, a database)
//! are fine. Each check panics with its name and what went wrong.
//!
//! ```no_run
//! # async fn f() {
//! hipflask_conformance::run(std::sync::Arc::new(hipflask::MemoryStore::new())).await;
//! # }
//! ```

use std::sync::Arc;

use hipflask::{BigInt, Changes, DateTime, Dict, ErrorKind, Record, SessionId, Store, Update, Updated, Value};

/// The time the checks pretend it is.
pub const NOW: u64 = 1_700_000_000;

/// What a store can do, so that one suite serves them all.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// Every Flask value type comes back exactly. Stores in Flask-Session's
    /// msgpack format turn tuples into lists and UUIDs and Markup into
    /// strings, and cannot hold integers beyond 64 bits.
    pub exact_types: bool,
    /// The store expires sessions itself in real time (a Redis TTL), so
    /// expiry is checked by waiting rather than with a pretend clock, and
    /// there is nothing for cleanup to do.
    pub native_expiry: bool,
}

impl Capabilities {
    /// Everything.
    pub const FULL: Capabilities = Capabilities { exact_types: true, native_expiry: false };
    /// Redis in Flask-Session's format.
    pub const FLASK_SESSION_REDIS: Capabilities = Capabilities { exact_types: false, native_expiry: true };
}

/// Runs every check against a store that can do everything.
pub async fn run(store: Arc<dyn Store>) {
    run_with(store, Capabilities::FULL).await;
}

/// Runs every check against `store`, printing each name as it passes.
pub async fn run_with(store: Arc<dyn Store>, caps: Capabilities) {
    // Checks are independent; the order only puts the cheap ones first.
    if caps.exact_types {
        round_trips_every_flask_value_type(store.clone()).await;
    } else {
        round_trips_flask_session_value_types(store.clone()).await;
    }
    println!("conformance: value types ok");
    if caps.native_expiry {
        sessions_vanish_when_their_ttl_runs_out(store.clone()).await;
    } else {
        expired_sessions_are_invisible(store.clone()).await;
        cleanup_removes_only_expired_sessions(store.clone()).await;
    }
    println!("conformance: expiry ok");
    macro_rules! check {
        ($($name:ident),* $(,)?) => {$(
            $name(store.clone()).await;
            println!("conformance: {} ok", stringify!($name));
        )*};
    }
    check!(
        unknown_id_loads_nothing,
        update_applies_only_the_changed_keys,
        removing_the_last_key_and_adding_another_keeps_both_changes,
        cleared_then_set_keeps_only_the_new_keys,
        update_of_a_destroyed_session_does_not_resurrect_it,
        same_key_later_save_wins,
        same_key_conflict_is_rejected_when_asked,
        duplicate_create_is_a_conflict,
        concurrent_writers_of_different_keys_lose_nothing,
        logout_racing_writers_leaves_no_session,
        delete_reports_existence,
        user_index_lists_and_logs_out_everywhere,
        answers_in_place_are_the_answers_of_the_futures,
    );
}

fn dict(pairs: &[(&str, Value)]) -> Dict {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn record(data: Dict) -> Record {
    Record { data, created_at: NOW, expires_at: NOW + 3600 }
}

fn set(key: &str, value: impl Into<Value>) -> Changes {
    Changes { cleared: false, keys: vec![(key.to_owned(), Some(value.into()))] }
}

fn update(changes: Changes) -> Update {
    Update { changes, expires_at: NOW + 3600, loaded: None }
}

async fn fresh(store: &Arc<dyn Store>, data: Dict) -> SessionId {
    let id = SessionId::generate();
    store.create(&id, record(data)).await.expect("create");
    id
}

async fn load(store: &Arc<dyn Store>, id: &SessionId) -> Option<Dict> {
    store.load(id, NOW).await.expect("load").map(|r| r.data)
}

/// Every type Flask can put in a session comes back exactly.
pub async fn round_trips_every_flask_value_type(store: Arc<dyn Store>) {
    let mut nested = Dict::new();
    nested.insert(" t".into(), Value::from("looks like a tag"));
    let data = dict(&[
        ("_permanent", Value::Bool(true)),
        ("none", Value::Null),
        ("int", Value::Int(-42)),
        ("big", Value::BigInt(BigInt::parse("18446744073709551617").unwrap())),
        ("float", Value::Float(0.1 + 0.2)),
        ("inf", Value::Float(f64::INFINITY)),
        ("str", Value::from("你好 \"quoted\" \u{1F600}")),
        ("list", Value::List(vec![Value::Int(1), Value::List(vec![])])),
        ("tuple", Value::Tuple(vec![Value::from("message"), Value::from("Hello")])),
        ("bytes", Value::Bytes(vec![0, 1, 254, 255])),
        ("markup", Value::Markup("<b>bold</b>".into())),
        ("uuid", Value::Uuid(uuid::Uuid::from_u128(0xf47a_c10b_58cc_4372_a567_0e02_b2c3_d479))),
        ("datetime", Value::DateTime(DateTime::from_unix(1_704_164_645).unwrap())),
        ("dict", Value::Dict(nested)),
        (" spaced", Value::Int(1)),
    ]);
    let id = fresh(&store, data.clone()).await;
    let got = store.load(&id, NOW).await.expect("load").expect("the session exists");
    assert_eq!(got.data, data, "round_trips_every_flask_value_type");
    assert_eq!((got.created_at, got.expires_at), (NOW, NOW + 3600), "timestamps kept");
}

/// The types Flask-Session's format keeps come back exactly; the others come
/// back as Flask-Session returns them.
pub async fn round_trips_flask_session_value_types(store: Arc<dyn Store>) {
    let data = dict(&[
        ("_permanent", Value::Bool(true)),
        ("none", Value::Null),
        ("int", Value::Int(-42)),
        ("u64", Value::BigInt(BigInt::parse("18446744073709551615").unwrap())),
        ("float", Value::Float(0.1 + 0.2)),
        ("str", Value::from("你好 \"quoted\" \u{1F600}")),
        ("list", Value::List(vec![Value::Int(1), Value::List(vec![])])),
        ("bytes", Value::Bytes(vec![0, 1, 254, 255])),
        ("datetime", Value::DateTime(DateTime::from_unix(1_704_164_645).unwrap())),
        ("dict", Value::Dict(dict(&[("k", Value::Int(1))]))),
    ]);
    let id = fresh(&store, data.clone()).await;
    assert_eq!(load(&store, &id).await.unwrap(), data, "round_trips_flask_session_value_types");
    let lossy = dict(&[
        ("tuple", Value::Tuple(vec![Value::from("message"), Value::from("Hello")])),
        ("uuid", Value::Uuid(uuid::Uuid::from_u128(0x1234_5678_1234_5678_1234_5678_1234_5678))),
        ("markup", Value::Markup("<b>x</b>".into())),
    ]);
    let id = fresh(&store, lossy).await;
    let got = load(&store, &id).await.unwrap();
    assert_eq!(got["tuple"], Value::List(vec![Value::from("message"), Value::from("Hello")]));
    assert_eq!(got["uuid"], Value::from("12345678-1234-5678-1234-567812345678"));
    assert_eq!(got["markup"], Value::from("<b>x</b>"));
}

/// An id never stored loads as `None`.
pub async fn unknown_id_loads_nothing(store: Arc<dyn Store>) {
    assert_eq!(load(&store, &SessionId::generate()).await, None, "unknown_id_loads_nothing");
}

/// A session stored with a one-second lifetime is gone after it.
pub async fn sessions_vanish_when_their_ttl_runs_out(store: Arc<dyn Store>) {
    let id = SessionId::generate();
    store
        .create(&id, Record { data: dict(&[("a", Value::Int(1))]), created_at: NOW, expires_at: NOW + 1 })
        .await
        .unwrap();
    assert!(store.load(&id, NOW).await.unwrap().is_some(), "live at first");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(store.load(&id, NOW).await.unwrap().is_none(), "gone after its TTL");
    let up = store.update(&id, &update(set("b", 2)), NOW).await.unwrap();
    assert_eq!(up, Updated::Gone, "an expired session is not updated");
}

/// A session is live strictly before its expiry.
pub async fn expired_sessions_are_invisible(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(1))])).await;
    assert!(store.load(&id, NOW + 3599).await.unwrap().is_some(), "live before expiry");
    assert!(store.load(&id, NOW + 3600).await.unwrap().is_none(), "expired at expiry");
    let up = store.update(&id, &update(set("b", 2)), NOW + 3600).await.unwrap();
    assert_eq!(up, Updated::Gone, "an expired session is not updated");
}

/// Keys the request did not touch keep their stored values.
pub async fn update_applies_only_the_changed_keys(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(1)), ("b", Value::Int(2)), ("c", Value::Int(3))])).await;
    let changes = Changes { cleared: false, keys: vec![("a".into(), Some(Value::Int(10))), ("c".into(), None)] };
    assert_eq!(store.update(&id, &update(changes), NOW).await.unwrap(), Updated::Applied);
    assert_eq!(load(&store, &id).await.unwrap(), dict(&[("a", Value::Int(10)), ("b", Value::Int(2))]));
}

/// A save that removes the last stored key and adds a new one: the new key
/// gets its own value, and the removed one stays removed (the Redis merge
/// script once gave the removed key the new key's value).
pub async fn removing_the_last_key_and_adding_another_keeps_both_changes(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(1)), ("x", Value::Int(2))])).await;
    let changes = Changes { cleared: false, keys: vec![("x".into(), None), ("y".into(), Some(Value::Int(3)))] };
    assert_eq!(store.update(&id, &update(changes), NOW).await.unwrap(), Updated::Applied);
    assert_eq!(load(&store, &id).await.unwrap(), dict(&[("a", Value::Int(1)), ("y", Value::Int(3))]));
}

/// Two instances of a store on the same data, as two processes would be.
/// Stores may remember what they last read to make a save one
/// compare-and-set; a save from an instance whose memory is stale must be
/// merged into the session as stored, and its conflict check made against
/// it, never swapped in. The other instance's change differs only in case, so
/// a comparison that ignores case (a MySQL collation) is caught too.
pub async fn a_save_from_a_stale_instance_is_merged_not_swapped_in(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let id = fresh(&a, dict(&[("name", Value::from("x")), ("n", Value::Int(1))])).await;
    assert!(load(&a, &id).await.is_some() && load(&b, &id).await.is_some());
    assert_eq!(b.update(&id, &update(set("name", "X")), NOW).await.unwrap(), Updated::Applied);
    assert_eq!(a.update(&id, &update(set("n", 2)), NOW).await.unwrap(), Updated::Applied);
    let both = dict(&[("name", Value::from("X")), ("n", Value::Int(2))]);
    assert_eq!(load(&b, &id).await.unwrap(), both, "a's save kept b's change");

    // a loads name X; b changes it; a's change of the same key is refused.
    assert_eq!(load(&a, &id).await.unwrap(), both);
    assert_eq!(b.update(&id, &update(set("name", "Y")), NOW).await.unwrap(), Updated::Applied);
    let stale = Update { changes: set("name", "Z"), expires_at: NOW + 3600, loaded: Some(vec![Some("X".into())]) };
    let err = a.update(&id, &stale, NOW).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(load(&a, &id).await.unwrap()["name"], Value::from("Y"), "nothing written");

    // b deletes it; a's save from memory does not bring it back.
    assert!(b.delete(&id).await.unwrap());
    assert_eq!(a.update(&id, &update(set("n", 3)), NOW).await.unwrap(), Updated::Gone);
    assert_eq!(load(&b, &id).await, None);
}

/// `clear()` followed by new keys leaves only the new keys.
pub async fn cleared_then_set_keeps_only_the_new_keys(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(1)), ("b", Value::Int(2))])).await;
    let changes = Changes { cleared: true, keys: vec![("z".into(), Some(Value::Int(26)))] };
    store.update(&id, &update(changes), NOW).await.unwrap();
    assert_eq!(load(&store, &id).await.unwrap(), dict(&[("z", Value::Int(26))]));
}

/// A session deleted by another request stays deleted.
pub async fn update_of_a_destroyed_session_does_not_resurrect_it(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("user", Value::from("alice"))])).await;
    assert!(store.delete(&id).await.unwrap());
    assert_eq!(store.update(&id, &update(set("cart", 1)), NOW).await.unwrap(), Updated::Gone);
    assert_eq!(load(&store, &id).await, None, "no resurrection");
}

/// Two saves of the same key: the later one wins.
pub async fn same_key_later_save_wins(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(0))])).await;
    store.update(&id, &update(set("a", 1)), NOW).await.unwrap();
    store.update(&id, &update(set("a", 2)), NOW).await.unwrap();
    assert_eq!(load(&store, &id).await.unwrap()["a"], Value::Int(2));
}

/// With the conflict check, a key changed since it was loaded is refused.
pub async fn same_key_conflict_is_rejected_when_asked(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(0))])).await;
    let loaded = vec![Some(Value::Int(0))];
    store.update(&id, &update(set("a", 1)), NOW).await.unwrap();
    let stale = Update { changes: set("a", 2), expires_at: NOW + 3600, loaded: Some(loaded) };
    let err = store.update(&id, &stale, NOW).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(load(&store, &id).await.unwrap()["a"], Value::Int(1), "nothing written");

    // A key loaded as absent that another request has set since.
    store.update(&id, &update(set("b", 1)), NOW).await.unwrap();
    let stale = Update { changes: set("b", 2), expires_at: NOW + 3600, loaded: Some(vec![None]) };
    assert_eq!(store.update(&id, &stale, NOW).await.unwrap_err().kind(), ErrorKind::Conflict);
    // Loaded values that do not go with the changes: the caller's mistake,
    // said as such, and nothing written.
    let lopsided = Update { changes: set("a", 3), expires_at: NOW + 3600, loaded: Some(vec![]) };
    let err = store.update(&id, &lopsided, NOW).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
    assert!(err.to_string().contains("one per entry of Changes::keys"), "{err}");
    assert_eq!(
        load(&store, &id).await.unwrap(),
        dict(&[("a", Value::Int(1)), ("b", Value::Int(1))]),
        "nothing written"
    );
}

/// Where a store answers in place (`load_now`, `update_now`), the answer is
/// the one its future gives: the same data, the same outcome, the same error.
pub async fn answers_in_place_are_the_answers_of_the_futures(store: Arc<dyn Store>) {
    let name = "answers_in_place_are_the_answers_of_the_futures";
    let id = fresh(&store, dict(&[("a", Value::Int(0)), ("b", Value::Int(0))])).await;
    // Twice: a store with a local cache answers the second read from it.
    for _ in 0..2 {
        let awaited = store.load(&id, NOW).await.expect("load").expect("the session exists");
        if let Some(now) = store.load_now(&id, NOW) {
            let now = now.expect("load_now").expect("load_now finds the session");
            assert_eq!(now.data, awaited.data, "{name}: data");
            // A time to live read back from a store ticking in real time may
            // have crossed a second boundary between the two reads.
            assert!(now.expires_at.abs_diff(awaited.expires_at) <= 1, "{name}: expiry");
        }
    }
    let unknown = SessionId::generate();
    if let Some(now) = store.load_now(&unknown, NOW) {
        assert_eq!(now.expect("load_now"), None, "{name}: unknown id");
    }
    let Some(applied) = store.update_now(&id, &update(set("a", 1)), NOW) else { return };
    assert_eq!(applied.expect("update_now"), Updated::Applied, "{name}: update");
    let stale = Update { changes: set("a", 2), expires_at: NOW + 3600, loaded: Some(vec![Some(Value::Int(0))]) };
    let refused = store.update_now(&id, &stale, NOW).expect("answered in place once, always").unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Conflict, "{name}: conflict");
    let gone = store.update_now(&unknown, &update(set("a", 1)), NOW).expect("answered in place once, always");
    assert_eq!(gone.expect("update_now"), Updated::Gone, "{name}: unknown id is gone");
    assert_eq!(load(&store, &id).await, Some(dict(&[("a", Value::Int(1)), ("b", Value::Int(0))])), "{name}: written");
}

/// Creating an existing id fails instead of overwriting.
pub async fn duplicate_create_is_a_conflict(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(1))])).await;
    let err = store.create(&id, record(dict(&[("b", Value::Int(2))]))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(load(&store, &id).await.unwrap(), dict(&[("a", Value::Int(1))]));
}

/// 100 tasks each set their own key on one session at once: all 100 stay.
pub async fn concurrent_writers_of_different_keys_lose_nothing(store: Arc<dyn Store>) {
    let id = Arc::new(fresh(&store, Dict::new()).await);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.update(&id, &update(set(&format!("k{i:03}"), i)), NOW).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Updated::Applied);
    }
    let data = load(&store, &id).await.unwrap();
    assert_eq!(data.len(), 100, "lost updates: only {} keys of 100", data.len());
}

/// A logout racing 50 writers: once it has happened no write brings the session back.
pub async fn logout_racing_writers_leaves_no_session(store: Arc<dyn Store>) {
    let id = Arc::new(fresh(&store, dict(&[("user", Value::from("alice"))])).await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (s, sid) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(
            async move { s.update(&sid, &update(set(&format!("w{i}"), i)), NOW).await.map(|_| ()) },
        ));
        if i == 25 {
            let (s, sid) = (store.clone(), id.clone());
            tasks.push(tokio::spawn(async move { s.delete(&sid).await.map(|_| ()) }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(load(&store, &id).await, None, "the logout was undone");
}

/// `delete` says whether the session existed.
pub async fn delete_reports_existence(store: Arc<dyn Store>) {
    let id = fresh(&store, dict(&[("a", Value::Int(1))])).await;
    assert!(store.delete(&id).await.unwrap());
    assert!(!store.delete(&id).await.unwrap());
}

/// Cleanup deletes expired sessions and keeps live ones.
pub async fn cleanup_removes_only_expired_sessions(store: Arc<dyn Store>) {
    let short = SessionId::generate();
    store.create(&short, Record { data: Dict::new(), created_at: NOW, expires_at: NOW + 5 }).await.unwrap();
    let long = fresh(&store, Dict::new()).await;
    let removed = store.delete_expired(NOW + 10).await.unwrap();
    assert!(removed >= 1, "removed {removed}");
    assert!(store.load(&long, NOW + 10).await.unwrap().is_some());
    let listed = store.list(NOW + 10).await.unwrap();
    assert!(listed.contains(&long) && !listed.contains(&short));
    assert_eq!(store.delete_expired(NOW + 10).await.unwrap(), 0, "nothing left to remove");
}

/// The per-user index follows the user key through writes and logs out everywhere.
pub async fn user_index_lists_and_logs_out_everywhere(store: Arc<dyn Store>) {
    // A user name unique to this run, so shared stores do not see others' sessions.
    let alice = format!("alice-{}", SessionId::generate().as_str());
    let bob = format!("bob-{}", SessionId::generate().as_str());
    let a1 = fresh(&store, dict(&[("_user_id", Value::from(alice.as_str()))])).await;
    let a2 = fresh(&store, dict(&[("_user_id", Value::from(alice.as_str()))])).await;
    let b1 = fresh(&store, dict(&[("_user_id", Value::from(bob.as_str()))])).await;
    let anon = fresh(&store, Dict::new()).await;
    // Logging in on an existing session adds it to the index.
    store.update(&anon, &update(set("_user_id", alice.as_str())), NOW).await.unwrap();
    // A write that leaves the user alone leaves the session in the index.
    store.update(&a1, &update(set("cart", "tea")), NOW).await.unwrap();
    let mut mine = store.sessions_of_user(&alice, NOW).await.unwrap();
    mine.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let mut want = vec![a1.clone(), a2.clone(), anon.clone()];
    want.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(mine, want);
    // Logging out of one session removes it from the index.
    let logout = Changes { cleared: true, keys: vec![] };
    store.update(&a2, &update(logout), NOW).await.unwrap();
    assert_eq!(store.sessions_of_user(&alice, NOW).await.unwrap().len(), 2);
    assert_eq!(store.delete_user(&alice).await.unwrap(), 2);
    assert_eq!(load(&store, &a1).await, None);
    assert_eq!(load(&store, &anon).await, None);
    assert!(load(&store, &a2).await.is_some(), "the logged-out session is not the user's any more");
    assert!(load(&store, &b1).await.is_some(), "other users keep their sessions");
    assert_eq!(store.sessions_of_user(&alice, NOW).await.unwrap(), Vec::<SessionId>::new());
}
