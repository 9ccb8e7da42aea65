//! The standard table set of the datapath tests, and a generator of valid and
//! mutated frames for it: shared by the corpus test and the malformed-packet storm.

use migr_common::{
    cid::CidConfig,
    maps::{
        Action, FAMILY_V4, FAMILY_V6, ForwardMode, LISTENER_QUIC, ListenerEntry, NO_SERVICE,
        SERVICE_MPTCP,
    },
    wire::tcp::{TCP_ACK, TCP_SYN},
};
use migr_user::datapath::DatapathConfig;

use crate::{
    fixture::{Fixture, TEST_RUN_IFINDEX, forward_v4, forward_v6, listener_key, service, v4},
    frames::{FrameBuilder, mptcp, quic, tcp_opt},
    require_privileges,
};

pub const CLIENT: [u8; 4] = [10, 1, 0, 1];
pub const SERVER: [u8; 4] = [10, 1, 0, 2];
pub const NEW_SERVER: [u8; 4] = [10, 2, 0, 2];
pub const SERVER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const NEW_SERVER6: [u8; 16] = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

// Service ids, one per action, and their ports.
pub const PASS_SVC: u32 = 1;
pub const PARK_SVC: u32 = 2;
pub const FWD_SVC: u32 = 3;
pub const SAMEIP_SVC: u32 = 4;
pub const DROP_SVC: u32 = 5;
pub const MPTCP_SVC: u32 = 6;
pub const FWD6_SVC: u32 = 7;
pub const REDIRECT_SVC: u32 = 8;
pub const ALL: [u32; 9] = [
    NO_SERVICE,
    PASS_SVC,
    PARK_SVC,
    FWD_SVC,
    SAMEIP_SVC,
    DROP_SVC,
    MPTCP_SVC,
    FWD6_SVC,
    REDIRECT_SVC,
];

pub fn port_of(svc: u32) -> u16 {
    4000 + svc as u16
}

pub const QUIC_PORT: u16 = 4433;
pub fn cid_config() -> CidConfig {
    CidConfig::new(8, 1, 2).unwrap()
}

/// A CID carrying `server_id` per [`cid_config`].
pub fn cid_for(server_id: u32) -> Vec<u8> {
    let mut cid = vec![0x5a; 8];
    cid_config().write_server_id(&mut cid, server_id).unwrap();
    cid
}

/// The standard table set: a listener per service, a QUIC listener whose
/// server ids 0x101..=0x105 map to services 1..=5, and a token for PARK_SVC.
pub fn fixture() -> Fixture {
    fixture_with(&DatapathConfig::default())
}

pub fn fixture_with(config: &DatapathConfig) -> Fixture {
    require_privileges();
    let mut f = Fixture::with_config(config).expect("load the datapath");
    let none = Default::default();
    f.set_service(PASS_SVC, service(Action::Pass, 0, none))
        .unwrap();
    f.set_service(PARK_SVC, service(Action::Park, 0, none))
        .unwrap();
    f.set_service(
        FWD_SVC,
        service(
            Action::Forward,
            0,
            forward_v4(
                NEW_SERVER,
                5443,
                ForwardMode::AddressChanging,
                TEST_RUN_IFINDEX,
            ),
        ),
    )
    .unwrap();
    f.set_service(
        SAMEIP_SVC,
        service(
            Action::Forward,
            0,
            forward_v4([0; 4], 0, ForwardMode::SameIp, TEST_RUN_IFINDEX),
        ),
    )
    .unwrap();
    f.set_service(DROP_SVC, service(Action::Drop, 0, none))
        .unwrap();
    f.set_service(MPTCP_SVC, service(Action::Pass, SERVICE_MPTCP, none))
        .unwrap();
    f.set_service(
        FWD6_SVC,
        service(
            Action::Forward,
            0,
            forward_v6(NEW_SERVER6, 0, TEST_RUN_IFINDEX),
        ),
    )
    .unwrap();
    // Egress != ingress: goes through the DEVMAP, which holds the loopback device.
    f.set_service(
        REDIRECT_SVC,
        service(
            Action::Forward,
            0,
            forward_v4(NEW_SERVER, 0, ForwardMode::AddressChanging, 77),
        ),
    )
    .unwrap();
    f.dp.set_forward_device(REDIRECT_SVC, TEST_RUN_IFINDEX)
        .unwrap();

    for svc in [
        PASS_SVC,
        PARK_SVC,
        FWD_SVC,
        SAMEIP_SVC,
        DROP_SVC,
        REDIRECT_SVC,
    ] {
        for proto in [6u8, 17] {
            let entry = ListenerEntry {
                service_id: svc,
                ..Default::default()
            };
            f.set_listener(
                listener_key(v4(SERVER), port_of(svc), proto, FAMILY_V4),
                entry,
            )
            .unwrap();
        }
    }
    f.set_listener(
        listener_key(v4(SERVER), port_of(MPTCP_SVC), 6, FAMILY_V4),
        ListenerEntry {
            service_id: MPTCP_SVC,
            ..Default::default()
        },
    )
    .unwrap();
    for proto in [6u8, 17] {
        f.set_listener(
            listener_key(SERVER6, port_of(FWD6_SVC), proto, FAMILY_V6),
            ListenerEntry {
                service_id: FWD6_SVC,
                ..Default::default()
            },
        )
        .unwrap();
    }
    f.set_listener(
        listener_key(v4(SERVER), QUIC_PORT, 17, FAMILY_V4),
        ListenerEntry {
            service_id: PASS_SVC,
            flags: LISTENER_QUIC,
            cid: cid_config(),
        },
    )
    .unwrap();
    for svc in 1..=5 {
        f.set_server_id(0x100 + svc, svc).unwrap();
    }
    f.set_token(0xfeed_f00d, PARK_SVC).unwrap();
    f
}

pub fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    FrameBuilder::udp_v4(CLIENT, 50000, SERVER, dport)
        .payload(payload)
        .build()
}

/// xorshift64*: a small deterministic generator for the corpus.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub fn valid_frame(rng: &mut Rng) -> Vec<u8> {
    let svc = 1 + rng.below(8) as u32;
    let port = if rng.below(5) == 0 { 9 } else { port_of(svc) };
    let sport = 30000 + rng.below(200) as u16;
    let payload: Vec<u8> = (0..rng.below(300)).map(|_| rng.next_u64() as u8).collect();
    match rng.below(10) {
        0 => FrameBuilder::udp_v4(CLIENT, sport, SERVER, port)
            .payload(&payload)
            .build(),
        1 => {
            let tcp = FrameBuilder::tcp_v4(CLIENT, sport, SERVER, port).flags(TCP_ACK);
            // The timestamps of an established Linux connection (the fast
            // path takes those options as plain), a SYN's options (it walks
            // them), or none.
            let tcp = match rng.below(3) {
                0 => tcp.tcp_options(&timestamps_only(rng)),
                1 => tcp.tcp_options(&syn_options(rng)),
                _ => tcp,
            };
            tcp.payload(&payload).build()
        }
        2 => FrameBuilder::udp_v6(
            [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            sport,
            SERVER6,
            port_of(FWD6_SVC),
        )
        .payload(&payload)
        .build(),
        3 => udp(
            QUIC_PORT,
            &quic::short(&cid_for(0x100 + rng.below(7) as u32), &payload),
        ),
        4 => udp(
            QUIC_PORT,
            &quic::initial(&[rng.next_u64() as u8; 8], &[2; 8], &[], &payload),
        ),
        5 => {
            // After a SYN's own options half the time, as Linux sends it.
            let mut options = if rng.below(2) == 0 {
                syn_options(rng)
            } else {
                Vec::new()
            };
            let token = if rng.below(2) == 0 {
                0xfeed_f00d
            } else {
                rng.next_u64() as u32
            };
            options.extend(mptcp::join_syn(false, 1, token, 7));
            FrameBuilder::tcp_v4(CLIENT, sport, [10, 1, 0, 99], 8080)
                .flags(TCP_SYN)
                .tcp_options(&options)
                .build()
        }
        6 => FrameBuilder::tcp_v4(CLIENT, sport, SERVER, port_of(MPTCP_SVC))
            .flags(TCP_ACK)
            .tcp_options(&mptcp::capable_ack(1, 1, rng.next_u64(), rng.next_u64()))
            .build(),
        7 => FrameBuilder::tcp_v4(CLIENT, sport, SERVER, port)
            .flags(TCP_ACK)
            .tcp_options(&mptcp_data_options(rng))
            .payload(&payload)
            .build(),
        8 => FrameBuilder::udp_v4(CLIENT, sport, SERVER, port)
            .vlan(rng.below(4000) as u16)
            .payload(&payload)
            .build(),
        _ => FrameBuilder::ethernet(0x0806).payload(&payload).build(),
    }
}

/// The options of an MPTCP data segment: a DSS of any form, after the
/// timestamps half the time, padded with NOPs (as Linux does) or EOLs (the
/// frame builder's padding) to a multiple of 4 bytes.
pub fn mptcp_data_options(rng: &mut Rng) -> Vec<u8> {
    let mut options = if rng.below(2) == 0 {
        timestamps_only(rng)
    } else {
        Vec::new()
    };
    let mapping = (rng.below(4) != 0).then(|| mptcp::DssMapping {
        dsn: rng.next_u64(),
        subflow_seq: rng.next_u64() as u32,
        data_len: rng.below(1500) as u16,
        checksum: (rng.below(2) == 0).then(|| rng.next_u64() as u16),
    });
    options.extend(mptcp::dss(&mptcp::Dss {
        data_ack: (rng.below(4) != 0).then(|| rng.next_u64()),
        data_ack_8: rng.below(2) == 0,
        mapping,
        dsn_8: rng.below(2) == 0,
        data_fin: rng.below(8) == 0,
    }));
    if rng.below(2) == 0 {
        while !options.len().is_multiple_of(4) {
            options.push(tcp_opt::nop()[0]);
        }
    }
    options
}

/// A Linux SYN's options: MSS, SACK permitted, timestamps, NOP, window scale
/// (20 bytes).
pub fn syn_options(rng: &mut Rng) -> Vec<u8> {
    [
        tcp_opt::mss(1200 + rng.below(300) as u16),
        tcp_opt::sack_permitted(),
        tcp_opt::timestamps(rng.next_u64() as u32, 0),
        tcp_opt::nop(),
        tcp_opt::wscale(rng.below(15) as u8),
    ]
    .concat()
}

/// NOP, NOP, timestamps: the options of most TCP segments on the wire.
pub fn timestamps_only(rng: &mut Rng) -> Vec<u8> {
    let mut options = [tcp_opt::nop(), tcp_opt::nop()].concat();
    options.extend(tcp_opt::timestamps(
        rng.next_u64() as u32,
        rng.next_u64() as u32,
    ));
    options
}

pub fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    match rng.below(3) {
        0 => {
            // Flip a few bytes, mostly in the headers.
            for _ in 0..1 + rng.below(4) {
                let span = frame.len().min(80) as u64;
                let i = rng.below(span) as usize;
                frame[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let keep = 14 + rng.below(frame.len() as u64 - 13) as usize;
            frame.truncate(keep.min(frame.len()));
        }
        _ => {
            let i = rng.below(frame.len() as u64) as usize;
            frame[i] = rng.next_u64() as u8;
        }
    }
}
