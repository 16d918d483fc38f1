use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::Headers;

fn contact(n: u8) -> Contact {
    let addr: SocketAddr = format!("10.0.0.{n}:4434").parse().unwrap();
    Contact { id: NodeId([n; 32]), addr }
}

fn pattern(p: &str) -> Pattern {
    Pattern::new(p).unwrap()
}

fn topic(t: &str) -> Topic {
    Topic::new(t).unwrap()
}

fn message(t: &str, payload: &'static [u8]) -> Forward {
    Forward {
        realm: Bytes::from_static(b"r"),
        topic: Bytes::copy_from_slice(t.as_bytes()),
        headers: Headers::default(),
        groups: Vec::new(),
        payload: Bytes::from_static(payload),
    }
}

fn discovery(now: Instant) -> Discovery {
    Discovery::new(contact(1), Config::default(), now)
}

fn actions(d: &mut Discovery) -> Vec<Action> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn publications(d: &mut Discovery) -> Vec<Publication> {
    std::iter::from_fn(|| d.poll_publication()).collect()
}

/// What node `from` publishes for its subscriptions `entries` under `prefix`, as the DHT
/// would return it.
fn interest_record(from: u8, realm: &str, prefix: &str, entries: &[(&str, &str, usize)]) -> Record {
    let mut other = Discovery::new(contact(from), Config::default(), Instant::now());
    let now = Instant::now();
    for (p, g, n) in entries {
        for _ in 0..*n {
            let group = (!g.is_empty()).then(|| Bytes::copy_from_slice(g.as_bytes()));
            other.add_local(now, realm, &pattern(p), group.as_ref());
        }
    }
    other.handle_timeout(now + Duration::from_secs(1));
    let key = interest_key(realm, prefix);
    let value = publications(&mut other)
        .into_iter()
        .find_map(|p| match p {
            Publication::Publish { key: k, value, .. } if k == key => Some(value),
            _ => None,
        })
        .unwrap_or_default();
    Record { key, publisher: contact(from).id, value, expires: now + Duration::from_secs(60) }
}

#[test]
fn a_prefix_first_subscription_is_published_at_once_later_ones_coalesced() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    d.add_local(t0, "r", &pattern("a.b"), None);
    assert_eq!(d.poll_timeout(), t0, "the first subscription under a prefix is published now");
    d.add_local(t0, "r", &pattern("a.c"), None);
    d.handle_timeout(t0);
    let published = publications(&mut d);
    assert_eq!(published.len(), 1, "both patterns in one record: {published:?}");
    let Publication::Publish { key, value, ttl } = &published[0] else { panic!("{published:?}") };
    assert_eq!(*key, interest_key("r", "a"));
    assert_eq!(*ttl, Config::default().record_ttl);
    let r = Record { key: *key, publisher: contact(1).id, value: value.clone(), expires: t0 };
    let (_, subs) = record::decode_interest(&r).unwrap();
    assert_eq!(subs.iter().map(|s| s.pattern.as_str()).collect::<Vec<_>>(), ["a.b", "a.c"]);

    // Another pattern under a known prefix waits for the flush interval.
    d.add_local(t0, "r", &pattern("a.d"), None);
    assert_eq!(d.poll_timeout(), t0 + Config::default().flush_every);
    d.handle_timeout(t0 + Duration::from_millis(1));
    assert!(publications(&mut d).is_empty());
}

#[test]
fn the_last_unsubscribe_retracts_and_wildcards_file_under_the_empty_prefix() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    d.add_local(t0, "r", &pattern("*.x"), None);
    d.add_local(t0, "r", &pattern("*.x"), None);
    d.handle_timeout(t0);
    assert!(matches!(&publications(&mut d)[..], [Publication::Publish { key, .. }] if *key == interest_key("r", "")));
    d.remove_local(t0, "r", &pattern("*.x"), None);
    d.handle_timeout(t0 + Duration::from_secs(1));
    assert!(publications(&mut d).is_empty(), "one subscription remains: nothing to publish");
    d.remove_local(t0, "r", &pattern("*.x"), None);
    d.handle_timeout(t0 + Duration::from_secs(2));
    assert!(matches!(&publications(&mut d)[..], [Publication::Retract { key, .. }] if *key == interest_key("r", "")));
}

#[test]
fn a_queue_group_member_count_is_published_on_every_change() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let g = Bytes::from_static(b"workers");
    d.add_local(t0, "r", &pattern("jobs.>"), Some(&g));
    d.handle_timeout(t0);
    publications(&mut d);
    d.add_local(t0, "r", &pattern("jobs.>"), Some(&g));
    d.handle_timeout(t0 + Duration::from_secs(1));
    let published = publications(&mut d);
    let [Publication::Publish { key, value, .. }] = &published[..] else { panic!("{published:?}") };
    let r = Record { key: *key, publisher: contact(1).id, value: value.clone(), expires: t0 };
    assert_eq!(record::decode_interest(&r).unwrap().1[0].group, Some((g, 2)));
}

#[test]
fn providers_are_published_and_retracted() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    d.add_provider(t0, "r", "math.double");
    d.add_provider(t0, "r", "math.double");
    d.handle_timeout(t0 + Duration::from_secs(1));
    let key = provider_key("r", "math.double");
    assert_eq!(
        publications(&mut d),
        [Publication::Publish { key, value: Bytes::from("10.0.0.1:4434"), ttl: Config::default().record_ttl }]
    );
    d.remove_provider(t0, "r", "math.double");
    d.handle_timeout(t0 + Duration::from_secs(2));
    assert!(publications(&mut d).is_empty());
    d.remove_provider(t0, "r", "math.double");
    d.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(publications(&mut d), [Publication::Retract { key, ttl: Config::default().record_ttl }]);
}

#[test]
fn a_new_segment_is_looked_up_and_its_held_messages_go_out_in_order() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let t = topic("a.b");
    let targets = d.remote_targets(t0, "r", &t);
    assert!(targets.pending && targets.nodes.is_empty());
    let (ka, kall) = (interest_key("r", "a"), interest_key("r", ""));
    assert_eq!(actions(&mut d), [Action::LookUp(ka), Action::LookUp(kall)]);
    assert!(d.hold("r", &t, message("a.b", b"1"), Vec::new()));
    assert!(d.hold("r", &t, message("a.b", b"2"), Vec::new()));
    assert!(d.held_bytes() > 0);

    // Node 2 subscribes under `a`, node 3 to everything; this node's own record is ignored.
    d.lookup_done(
        t0,
        ka,
        &[interest_record(2, "r", "a", &[("a.*", "", 1)]), interest_record(1, "r", "a", &[("a.b", "", 1)])],
    );
    assert!(d.remote_targets(t0, "r", &t).pending, "still waiting for the other key");
    assert_eq!(actions(&mut d), [Action::Changed("r".into())]);
    d.lookup_done(t0, kall, &[interest_record(3, "r", "", &[(">", "", 1)])]);
    let out = actions(&mut d);
    let forwards: Vec<(u8, &[u8])> = out
        .iter()
        .filter_map(|a| match a {
            Action::Forward { to, message } => Some((to.id.0[0], &message.payload[..])),
            _ => None,
        })
        .collect();
    let to2: Vec<&[u8]> = forwards.iter().filter(|(n, _)| *n == 2).map(|(_, p)| *p).collect();
    let to3: Vec<&[u8]> = forwards.iter().filter(|(n, _)| *n == 3).map(|(_, p)| *p).collect();
    assert_eq!(to2, [b"1", b"2"]);
    assert_eq!(to3, [b"1", b"2"]);
    assert_eq!(out.last(), Some(&Action::Changed("r".into())), "routes go stale after the held messages");
    assert_eq!(d.held_bytes(), 0);

    let targets = d.remote_targets(t0, "r", &t);
    assert!(!targets.pending);
    let mut ids: Vec<u8> = targets.nodes.iter().map(|c| c.id.0[0]).collect();
    ids.sort();
    assert_eq!(ids, [2, 3]);
    assert!(!d.hold("r", &t, message("a.b", b"3"), Vec::new()), "known now: routed, not held");
    assert!(actions(&mut d).is_empty(), "no lookup per publish");
}

#[test]
fn segments_share_a_running_lookup_of_the_empty_prefix() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    d.remote_targets(t0, "r", &topic("a.x"));
    d.remote_targets(t0, "r", &topic("b.x"));
    let kall = interest_key("r", "");
    let looked: Vec<Action> = actions(&mut d);
    assert_eq!(looked.iter().filter(|a| **a == Action::LookUp(kall)).count(), 1);
    assert_eq!(d.stats().lookups, 3);
    d.lookup_done(t0, interest_key("r", "a"), &[]);
    d.lookup_done(t0, interest_key("r", "b"), &[]);
    assert!(d.remote_targets(t0, "r", &topic("a.x")).pending);
    d.lookup_done(t0, kall, &[]);
    assert!(!d.remote_targets(t0, "r", &topic("a.x")).pending);
    assert!(!d.remote_targets(t0, "r", &topic("b.x")).pending);
}

#[test]
fn held_messages_past_the_bound_are_dropped_and_counted() {
    let t0 = Instant::now();
    let config = Config { max_held_bytes: 200, ..Config::default() };
    let mut d = Discovery::new(contact(1), config, t0);
    let t = topic("a.b");
    d.remote_targets(t0, "r", &t);
    assert!(d.hold("r", &t, message("a.b", &[0; 100]), Vec::new()));
    assert!(d.hold("r", &t, message("a.b", &[0; 100]), Vec::new()), "taken, but dropped");
    assert_eq!(d.stats().held_dropped, 1);
    assert!(d.held_bytes() <= 200);
}

#[test]
fn a_held_group_message_goes_to_one_member_node_unless_served_here() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let t = topic("jobs.1");
    d.remote_targets(t0, "r", &t);
    actions(&mut d);
    let group: GroupId = (Bytes::from_static(b"jobs.*"), Bytes::from_static(b"w"));
    d.hold("r", &t, message("jobs.1", b"served"), vec![group.clone()]);
    d.hold("r", &t, message("jobs.1", b"open"), Vec::new());
    d.lookup_done(
        t0,
        interest_key("r", "jobs"),
        &[
            interest_record(2, "r", "jobs", &[("jobs.*", "w", 1)]),
            interest_record(3, "r", "jobs", &[("jobs.*", "w", 3)]),
        ],
    );
    d.lookup_done(t0, interest_key("r", ""), &[]);
    let forwards: Vec<Forward> = actions(&mut d)
        .into_iter()
        .filter_map(|a| match a {
            Action::Forward { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(forwards.len(), 1, "the served message stays here; the other goes to one node");
    assert_eq!(&forwards[0].payload[..], b"open");
    assert_eq!(forwards[0].groups, [group]);
}

#[test]
fn pushes_update_remote_interest_and_retractions_remove_it() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let t = topic("a.b");
    d.remote_targets(t0, "r", &t);
    d.lookup_done(t0, interest_key("r", "a"), &[]);
    d.lookup_done(t0, interest_key("r", ""), &[]);
    actions(&mut d);
    assert!(d.remote_targets(t0, "r", &t).nodes.is_empty());

    d.pushed(t0, &interest_record(4, "r", "a", &[("a.b", "", 1)]));
    assert_eq!(actions(&mut d), [Action::Changed("r".into())]);
    assert_eq!(d.remote_targets(t0, "r", &t).nodes, [contact(4)]);

    let mut gone = interest_record(4, "r", "a", &[]);
    gone.value = Bytes::new();
    d.pushed(t0, &gone);
    assert!(d.remote_targets(t0, "r", &t).nodes.is_empty());

    // Keys never looked up, and this node's own records, change nothing.
    actions(&mut d);
    d.pushed(t0, &interest_record(5, "other", "a", &[("a.b", "", 1)]));
    d.pushed(t0, &interest_record(1, "r", "a", &[("a.b", "", 1)]));
    assert!(actions(&mut d).is_empty());
    assert!(d.remote_targets(t0, "r", &t).nodes.is_empty());
}

#[test]
fn a_lookup_keeps_what_a_push_taught_after_it_began() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let t = topic("a.b");
    d.remote_targets(t0, "r", &t);
    d.pushed(t0 + Duration::from_millis(5), &interest_record(4, "r", "a", &[("a.b", "", 1)]));
    d.lookup_done(t0 + Duration::from_millis(10), interest_key("r", "a"), &[]);
    d.lookup_done(t0 + Duration::from_millis(10), interest_key("r", ""), &[]);
    assert_eq!(d.remote_targets(t0, "r", &t).nodes, [contact(4)]);
}

#[test]
fn a_departed_node_is_no_longer_a_target_or_provider() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let t = topic("a.b");
    d.remote_targets(t0, "r", &t);
    d.lookup_done(t0, interest_key("r", "a"), &[interest_record(2, "r", "a", &[("a.b", "", 1)])]);
    d.lookup_done(t0, interest_key("r", ""), &[]);
    let Providers::LookUp(key) = d.providers(t0, "r", "p") else { panic!("nothing cached yet") };
    let provider = Record { key, publisher: contact(2).id, value: Bytes::from("10.0.0.2:4434"), expires: t0 };
    d.lookup_done(t0, key, &[provider]);
    assert_eq!(d.provider_nodes("r", "p"), [contact(2)]);
    actions(&mut d);
    d.node_gone(&contact(2).id);
    assert_eq!(actions(&mut d), [Action::Changed("r".into())]);
    assert!(d.remote_targets(t0, "r", &t).nodes.is_empty());
    assert!(d.provider_nodes("r", "p").is_empty());
}

#[test]
fn a_node_without_the_provider_any_more_is_skipped_until_said_otherwise() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let Providers::LookUp(key) = d.providers(t0, "r", "p") else { panic!() };
    let record =
        |n: u8| Record { key, publisher: contact(n).id, value: Bytes::from(format!("10.0.0.{n}:4434")), expires: t0 };
    d.lookup_done(t0, key, &[record(2), record(3)]);
    d.provider_gone("r", "p", &contact(2).id);
    assert_eq!(d.providers(t0, "r", "p"), Providers::Known(vec![contact(3)]));
    d.provider_gone("r", "other", &contact(3).id);
    assert_eq!(d.provider_nodes("r", "p"), [contact(3)], "other procedures' lists are not touched");
    // Its next record (it registered again) brings it back.
    d.pushed(t0, &record(2));
    assert_eq!(d.provider_nodes("r", "p").len(), 2);
}

#[test]
fn provider_lists_are_cached_retried_at_most_once_a_second_and_kept_by_pushes() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    let Providers::LookUp(key) = d.providers(t0, "r", "p") else { panic!() };
    d.lookup_done(t0, key, &[]);
    assert_eq!(d.providers(t0 + Duration::from_millis(500), "r", "p"), Providers::Known(Vec::new()));
    assert_eq!(d.providers(t0 + Duration::from_secs(1), "r", "p"), Providers::LookUp(key));
    let t1 = t0 + Duration::from_secs(1);
    let provider = Record { key, publisher: contact(3).id, value: Bytes::from("10.0.0.3:4434"), expires: t1 };
    d.lookup_done(t1, key, std::slice::from_ref(&provider));
    assert_eq!(d.providers(t1 + Duration::from_secs(9), "r", "p"), Providers::Known(vec![contact(3)]));
    assert_eq!(d.providers(t1 + Duration::from_secs(10), "r", "p"), Providers::LookUp(key), "stale after 10 s");
    let moved = Record { value: Bytes::from("10.0.0.9:4434"), ..provider };
    d.pushed(t1, &moved);
    assert_eq!(d.provider_nodes("r", "p")[0].addr, "10.0.0.9:4434".parse::<SocketAddr>().unwrap());
    assert_eq!(d.stats().lookups, 3);
}

#[test]
fn segments_in_use_are_renewed_and_unused_ones_forgotten() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    for s in ["a.x", "b.x"] {
        d.remote_targets(t0, "r", &topic(s));
    }
    for k in ["a", "b", ""] {
        d.lookup_done(t0, interest_key("r", k), &[]);
    }
    actions(&mut d);
    assert_eq!(d.prefixes(), 2);
    let renew = Config::default().renew_after;
    d.remote_targets(t0 + renew / 2, "r", &topic("a.x")); // `a` is used, `b` is not
    let mut now = t0;
    while now < t0 + renew + renew / 3 {
        now = d.poll_timeout();
        d.handle_timeout(now);
    }
    let looked = actions(&mut d);
    assert!(looked.contains(&Action::LookUp(interest_key("r", "a"))), "{looked:?}");
    assert!(!looked.contains(&Action::LookUp(interest_key("r", "b"))));
    assert_eq!(d.prefixes(), 1, "`b` forgotten");
    assert!(!d.remote_targets(now, "r", &topic("a.x")).pending, "a renewal does not hold messages");
    assert!(d.remote_targets(now, "r", &topic("b.x")).pending, "`b` is looked up again when needed");
}

#[test]
fn at_the_segment_cap_the_least_recently_used_is_forgotten() {
    let t0 = Instant::now();
    let config = Config { max_prefixes: 2, ..Config::default() };
    let mut d = Discovery::new(contact(1), config, t0);
    for s in ["a.x", "b.x"] {
        d.remote_targets(t0, "r", &topic(s));
    }
    for k in ["a", "b", ""] {
        d.lookup_done(t0, interest_key("r", k), &[]);
    }
    d.remote_targets(t0, "r", &topic("a.x"));
    d.remote_targets(t0, "r", &topic("c.x"));
    assert_eq!(d.prefixes(), 2);
    assert_eq!(d.stats().evicted, 1);
    assert!(!d.remote_targets(t0, "r", &topic("a.x")).pending, "`a` was in use: kept");
    assert!(d.remote_targets(t0, "r", &topic("c.x")).pending);
}

#[test]
fn forgetting_everything_keeps_pending_segments() {
    let t0 = Instant::now();
    let mut d = discovery(t0);
    d.remote_targets(t0, "r", &topic("a.x"));
    d.remote_targets(t0, "r", &topic("b.x"));
    for k in ["a", ""] {
        d.lookup_done(t0, interest_key("r", k), &[interest_record(2, "r", k, &[(">", "", 1)])]);
    }
    d.forget_all();
    assert_eq!(d.prefixes(), 1, "`b` still waits for its lookup");
    assert!(d.remote_targets(t0, "r", &topic("b.x")).nodes.is_empty());
}

/// Records, per key, the patterns last published (`None`: retracted).
fn note_publications(d: &mut Discovery, last: &mut HashMap<Key, Option<Vec<String>>>) {
    for p in publications(d) {
        match p {
            Publication::Publish { key, value, .. } => {
                let r = Record { key, publisher: contact(1).id, value, expires: Instant::now() };
                let subs = record::decode_interest(&r).unwrap().1;
                last.insert(key, Some(subs.iter().map(|s| s.pattern.as_str().to_owned()).collect()));
            }
            Publication::Retract { key, .. } => {
                last.insert(key, None);
            }
        }
    }
}

proptest! {
    /// Whatever the order of subscriptions and unsubscriptions, what is published last per
    /// prefix is the set of patterns still subscribed (a retraction when none is).
    #[test]
    fn the_last_publication_matches_the_local_subscriptions(ops in prop::collection::vec((0usize..4, any::<bool>()), 1..40)) {
        let names = ["a.x", "a.y", "b.x", "*.x"];
        let t0 = Instant::now();
        let mut d = discovery(t0);
        let mut counts = [0usize; 4];
        let mut last: HashMap<Key, Option<Vec<String>>> = HashMap::default();
        let mut now = t0;
        for (i, subscribe) in ops {
            if subscribe {
                d.add_local(now, "r", &pattern(names[i]), None);
                counts[i] += 1;
            } else if counts[i] > 0 {
                d.remove_local(now, "r", &pattern(names[i]), None);
                counts[i] -= 1;
            }
            now += Duration::from_millis(7);
            d.handle_timeout(now);
            note_publications(&mut d, &mut last);
        }
        now += Duration::from_secs(1);
        d.handle_timeout(now);
        note_publications(&mut d, &mut last);
        for prefix in ["a", "b", ""] {
            let mut want: Vec<String> = names.iter().zip(counts).filter(|(n, c)| *c > 0 && pattern_prefix(&pattern(n)) == prefix).map(|(n, _)| (*n).to_owned()).collect();
            want.sort();
            let got = last.get(&interest_key("r", prefix)).cloned().flatten().unwrap_or_default();
            let mut got = got;
            got.sort();
            prop_assert_eq!(got, want);
        }
    }

    /// Held bytes never pass the bound and return to zero once the lookups end.
    #[test]
    fn held_bytes_stay_bounded(sizes in prop::collection::vec(0usize..400, 1..30)) {
        let t0 = Instant::now();
        let config = Config { max_held_bytes: 2000, ..Config::default() };
        let mut d = Discovery::new(contact(1), config, t0);
        let t = topic("a.b");
        d.remote_targets(t0, "r", &t);
        for n in sizes {
            let payload: &'static [u8] = Box::leak(vec![0u8; n].into_boxed_slice());
            d.hold("r", &t, message("a.b", payload), Vec::new());
            prop_assert!(d.held_bytes() <= 2000);
        }
        d.lookup_done(t0, interest_key("r", "a"), &[]);
        d.lookup_done(t0, interest_key("r", ""), &[]);
        prop_assert_eq!(d.held_bytes(), 0);
    }
}
