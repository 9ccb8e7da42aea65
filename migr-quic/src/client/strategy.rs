//! The strategies at work (seed 000, sections 3.2 and 3.3): where each
//! datagram goes, when unanswered data counts as a loss, which addresses
//! are probed then, and adopting the one that answers. What quinn-proto did
//! is read from its frame counters (see the parent module).

use std::mem;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn_proto::{Connection, FrameStats};

use super::{ClientEvent, ClientMigration, ProbeMode, Probing, Route, Strategy};

impl ClientMigration {
    /// Call after quinn-proto processed a datagram that came from `from`.
    pub fn datagram_received(&mut self, now: Instant, from: SocketAddr, conn: &mut Connection) {
        let rx = conn.stats().frame_rx;
        let seen = mem::replace(&mut self.rx_seen, rx);
        // Frames only count once a packet decrypted: this datagram is authentic.
        if frame_total(&rx) == frame_total(&seen) {
            return;
        }
        if rx.acks > seen.acks {
            self.unanswered_since = None;
        }
        if rx.path_challenge > seen.path_challenge {
            self.events
                .push_back(ClientEvent::PathChallengeAnswered { address: from });
        }
        if self
            .probing
            .as_ref()
            .is_some_and(|p| p.targets.contains(&from))
        {
            self.adopt(now, from, conn);
        }
        self.check_loss(now, conn);
    }

    /// Call for every datagram quinn-proto produced, right after
    /// `poll_transmit`, to learn where it goes.
    pub fn route(&mut self, now: Instant, conn: &mut Connection) -> Route {
        let tx = conn.stats().frame_tx;
        let seen = mem::replace(&mut self.tx_seen, tx);
        let carries_ack = tx.acks > seen.acks;
        let ack_eliciting = ack_eliciting_total(&tx) > ack_eliciting_total(&seen);
        if ack_eliciting && self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        let route = Route {
            destinations: match &self.probing {
                Some(probing) => probing.targets.clone(),
                None => vec![self.primary],
            },
            fresh_local_address: mem::take(&mut self.rebind_pending),
        };
        // P-Explicit: this datagram acknowledges SERVER_MIGRATION and still
        // goes to the old address; everything after it goes to the new one.
        if carries_ack && let Some(address) = self.switch_after_ack.take() {
            self.start_probing(now, conn, vec![address]);
        }
        route
    }

    /// Next instant at which `handle_timeout` has work to do.
    pub fn poll_timeout(&self, conn: &Connection) -> Option<Instant> {
        let fast = self.config.probing == ProbeMode::Fast;
        let probing = self
            .probing
            .as_ref()
            .and_then(|p| match (fast, p.widen_at) {
                (true, Some(w)) => Some(w.min(p.next_ping)),
                (true, None) => Some(p.next_ping),
                (false, widen_at) => widen_at,
            });
        let loss_armed = self.probing.is_none()
            && self.switch_after_ack.is_none()
            && !self.loss_targets().is_empty();
        let loss = self
            .unanswered_since
            .filter(|_| loss_armed)
            .map(|since| since + self.loss_timeout(conn));
        [probing, loss].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant, conn: &mut Connection) {
        self.check_loss(now, conn);
        let interval = self.probe_interval(conn);
        let previously_validated: Vec<SocketAddr> = self.validated.clone();
        let Some(probing) = &mut self.probing else {
            return;
        };
        if now >= probing.next_ping {
            // Keep probing cyclically: quinn-proto's own probe timeouts back off
            // exponentially, the server may come up at any moment.
            if self.config.probing == ProbeMode::Fast {
                conn.ping();
            }
            probing.next_ping = now + interval;
        }
        if probing.widen_at.is_some_and(|at| now >= at) {
            probing.widen_at = None;
            for address in previously_validated {
                if !probing.targets.contains(&address) {
                    probing.targets.push(address);
                }
            }
            self.events.push_back(ClientEvent::ProbingStarted {
                targets: probing.targets.clone(),
            });
        }
    }

    /// Addresses to probe when a loss happens; empty means "plain QUIC".
    fn loss_targets(&self) -> Vec<SocketAddr> {
        match self.config.strategy {
            Strategy::ProactiveExplicit | Strategy::ReactiveExplicit => {
                self.announced.into_iter().collect()
            }
            Strategy::PoolOfAddresses => {
                if self.pool.is_empty() {
                    return Vec::new();
                }
                let mut targets = self.pool.clone();
                if !targets.contains(&self.primary) {
                    targets.push(self.primary);
                }
                targets
            }
        }
    }

    fn check_loss(&mut self, now: Instant, conn: &mut Connection) {
        let lost = conn.stats().path.lost_packets;
        let declared = lost > self.lost_packets_seen
            && self
                .declared_losses_ignored_until
                .is_none_or(|until| now >= until);
        self.lost_packets_seen = lost;
        if self.probing.is_some() || self.switch_after_ack.is_some() {
            return;
        }
        let timed_out = self
            .unanswered_since
            .is_some_and(|since| now >= since + self.loss_timeout(conn));
        if !(declared || timed_out) {
            return;
        }
        let targets = self.loss_targets();
        if targets.is_empty() {
            return;
        }
        self.events.push_back(ClientEvent::LossDetected {
            primary: self.primary,
        });
        self.start_probing(now, conn, targets);
    }

    fn start_probing(&mut self, now: Instant, conn: &mut Connection, targets: Vec<SocketAddr>) {
        let explicit = self.config.strategy != Strategy::PoolOfAddresses;
        self.probing = Some(Probing {
            targets: targets.clone(),
            next_ping: now + self.probe_interval(conn),
            widen_at: explicit.then(|| now + self.config.fallback_after),
        });
        self.unanswered_since = None;
        if self.config.rebind_on_path_change {
            self.rebind_pending = true;
        }
        // A fresh CID for the new path (RFC 9000, 9.5) plus a PING: the probe.
        conn.local_address_changed();
        self.events
            .push_back(ClientEvent::ProbingStarted { targets });
    }

    /// The server answered from `address` while we were probing.
    fn adopt(&mut self, now: Instant, address: SocketAddr, conn: &mut Connection) {
        self.probing = None;
        self.declared_losses_ignored_until = Some(now + self.loss_timeout(conn));
        if self.announced == Some(address) {
            self.announced = None;
        }
        if !self.validated.contains(&address) {
            self.validated.push(address);
        }
        if address == self.primary {
            self.events
                .push_back(ClientEvent::ProbingEnded { primary: address });
            return;
        }
        let from = mem::replace(&mut self.primary, address);
        if from.ip() != address.ip() {
            // Another host: RTT and congestion state of the old path mean nothing here.
            conn.path_changed(now);
        }
        self.events
            .push_back(ClientEvent::PrimaryChanged { from, to: address });
    }

    fn probe_interval(&self, conn: &Connection) -> Duration {
        self.config.probe_interval.unwrap_or_else(|| {
            (conn.rtt() * 2).clamp(Duration::from_millis(5), Duration::from_millis(500))
        })
    }

    fn loss_timeout(&self, conn: &Connection) -> Duration {
        self.config
            .loss_timeout
            .unwrap_or_else(|| conn.rtt() * 3 + Duration::from_millis(35))
    }
}

fn frame_total(s: &FrameStats) -> u64 {
    ack_eliciting_total(s) + s.acks + s.connection_close
}

/// Frames other than ACK, CONNECTION_CLOSE (and PADDING, which is not counted).
fn ack_eliciting_total(s: &FrameStats) -> u64 {
    s.ack_frequency
        + s.crypto
        + s.data_blocked
        + s.datagram
        + u64::from(s.handshake_done)
        + s.immediate_ack
        + s.max_data
        + s.max_stream_data
        + s.max_streams_bidi
        + s.max_streams_uni
        + s.new_connection_id
        + s.new_token
        + s.path_challenge
        + s.path_response
        + s.ping
        + s.reset_stream
        + s.retire_connection_id
        + s.stream_data_blocked
        + s.streams_blocked_bidi
        + s.streams_blocked_uni
        + s.stop_sending
        + s.stream
}
