//! Arbitrary bytes into the DNS request path, as a UDP and as a TCP message. It must never
//! panic, and whenever the templated fast path answers, the hickory-proto general path must
//! give the very same bytes.

#![no_main]

use lancached::config::Config;
use lancached::dns::advertise::Advertise;
use lancached::dns::{Engine, Outcome, Request, Table, Transport};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let config = Config::parse(
        "[dns]\nintercept = [\"*.wild.test\", \"hf.co\"]\nrate_limit = 0\nallow = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    let adv = Advertise::from_addrs(&["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()]);
    Engine::new(Table::with_advertise(&config, Some(adv)), Arc::default())
});

fuzz_target!(|data: &[u8]| {
    let table = ENGINE.table();
    for (src, transport) in [("127.0.0.1", Transport::Udp), ("10.9.9.9", Transport::Tcp)] {
        let req = Request {
            bytes: data,
            src: src.parse().unwrap(),
            local: "127.0.0.1:53".parse().unwrap(),
            transport,
        };
        let _ = ENGINE.handle(&req);
        if let Some(fast) = ENGINE.fast(&req, &table) {
            match ENGINE.general(&req, &table) {
                Outcome::Reply(general) => assert_eq!(fast, general, "fast and general paths differ"),
                other => panic!("fast path answered, general path: {other:?}"),
            }
        }
    }
});
