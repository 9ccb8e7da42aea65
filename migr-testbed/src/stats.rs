//! What the clients wrote, turned into the numbers a run reports.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};

/// One answered request (a row of `migr-echo client --csv`).
#[derive(Debug, Clone)]
pub struct Request {
    pub index: usize,
    /// Milliseconds since the client started.
    pub send_ms: f64,
    pub response_ms: f64,
    pub service_ms: f64,
    pub server: String,
}

pub fn read_requests(csv: &Path) -> Result<Vec<Request>> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            continue;
        }
        let (Ok(index), Ok(send_ms), Ok(response_ms), Ok(service_ms)) =
            (f[0].parse(), f[1].parse(), f[2].parse(), f[3].parse())
        else {
            continue;
        };
        out.push(Request {
            index,
            send_ms,
            response_ms,
            service_ms,
            server: f[4].to_string(),
        });
    }
    Ok(out)
}

/// A client's CSV (the format [`read_requests`] reads): created with its
/// header, one flushed row per answered request, times in milliseconds since
/// `started`.
pub struct RequestCsv {
    out: std::io::BufWriter<std::fs::File>,
    started: std::time::Instant,
}

impl RequestCsv {
    pub fn create(path: &Path, started: std::time::Instant) -> Result<Self> {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        writeln!(
            out,
            "index,send_time_ms,response_time_ms,service_time_ms,server_address"
        )?;
        out.flush()?;
        Ok(Self { out, started })
    }

    /// Request `index`, sent (or waited for since) `sent`, answered at
    /// `received` by `server`.
    pub fn row(
        &mut self,
        index: usize,
        sent: std::time::Instant,
        received: std::time::Instant,
        server: impl std::fmt::Display,
    ) -> Result<()> {
        use std::io::Write as _;
        let ms = |t: std::time::Instant| (t - self.started).as_secs_f64() * 1e3;
        writeln!(
            self.out,
            "{index},{:.3},{:.3},{:.3},{server}",
            ms(sent),
            ms(received),
            (received - sent).as_secs_f64() * 1e3
        )?;
        self.out.flush()?;
        Ok(())
    }
}

/// Rows in a CSV file written so far (its header excluded).
pub fn rows_so_far(csv: &Path) -> usize {
    std::fs::read(csv)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count().saturating_sub(1))
        .unwrap_or(0)
}

/// The longest time the client waited without a response: over the
/// requests, the time from when the client was last served (or sent the
/// request, if later) to the request's response. Back to back this is the
/// longest gap between two responses; with sporadic requests, the longest
/// service time. In milliseconds, with the index of the request whose
/// response ended it.
pub fn disruption(requests: &[Request]) -> (f64, Option<usize>) {
    let mut worst = (0.0, None);
    let mut last_response: Option<f64> = None;
    for r in requests {
        let from = last_response.map_or(r.send_ms, |t| t.max(r.send_ms));
        let wait = r.response_ms - from;
        if wait > worst.0 {
            worst = (wait, Some(r.index));
        }
        last_response = Some(r.response_ms);
    }
    worst
}

/// What the client waited for each response (the waits [`disruption`]
/// takes the longest of), in milliseconds.
pub fn waits(requests: &[Request]) -> Vec<f64> {
    let mut last_response: Option<f64> = None;
    requests
        .iter()
        .map(|r| {
            let from = last_response.map_or(r.send_ms, |t| t.max(r.send_ms));
            last_response = Some(r.response_ms);
            r.response_ms - from
        })
        .collect()
}

/// An outage split into pieces is not one long gap: the time the client
/// waited beyond the usual (the sum, over every wait, of what exceeds the
/// median wait), and every wait over twice the median and 1 ms, in order.
pub fn excess_and_long_gaps(requests: &[Request]) -> (f64, Vec<f64>) {
    let w = waits(requests);
    if w.is_empty() {
        return (0.0, Vec::new());
    }
    let mut sorted = w.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let excess = w.iter().map(|x| (x - median).max(0.0)).sum();
    let long = w
        .into_iter()
        .filter(|x| *x > 2.0 * median && *x > 1.0)
        .collect();
    (excess, long)
}

/// The median service time (milliseconds).
pub fn median_service(requests: &[Request]) -> f64 {
    let mut v: Vec<f64> = requests.iter().map(|r| r.service_ms).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The client's closing `summary key=value ...` line from its stderr.
pub fn client_summary(stderr: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(stderr)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("summary "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One loss the client's QUIC stack declared: when (ms after `origin`)
/// and which packet numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct DeclaredLoss {
    pub at_ms: f64,
    pub packets: String,
}

/// The client's `packets-lost UNIX_SECONDS [PN,..]` lines, timed from
/// `origin` (wall-clock seconds, e.g. the pre-dump action).
pub fn declared_losses(client_stderr: &str, origin: f64) -> Vec<DeclaredLoss> {
    client_stderr
        .lines()
        .filter_map(|l| l.strip_prefix("packets-lost "))
        .filter_map(|rest| {
            let (at, packets) = rest.split_once(' ')?;
            Some(DeclaredLoss {
                at_ms: (at.parse::<f64>().ok()? - origin) * 1e3,
                packets: packets.to_string(),
            })
        })
        .collect()
}

/// `Udp: RcvbufErrors` from a namespace's /proc/net/snmp: datagrams the
/// kernel dropped because a socket's receive buffer was full.
pub fn udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// Mean and 95% confidence half-width (Student's t) of `xs`.
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // t(0.975, n-1) for n-1 = 1..30, then the normal quantile.
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    let t = T.get(n - 2).copied().unwrap_or(1.96);
    (mean, t * (var / n as f64).sqrt())
}

/// Where a freeze hit a bulk TCP transfer (the client's `send-queue-busy`
/// lines, `tcpecho`): while request bytes were unacknowledged (the client's
/// segments were the ones held up: the upload) or while only the echo was
/// outstanding (the server's segments: the echo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezeHit {
    Upload,
    Echo,
}

impl FreezeHit {
    pub fn name(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Echo => "echo",
        }
    }

    /// `None` when the client watched nothing (or its watch failed).
    pub fn classify(client_stderr: &str, freeze_at: f64) -> Option<Self> {
        if client_stderr.contains("send-queue-watch-failed") {
            return None;
        }
        let mut watched = false;
        for line in client_stderr.lines() {
            let Some(rest) = line.strip_prefix("send-queue-busy ") else {
                continue;
            };
            let mut times = rest.split_whitespace().map(str::parse::<f64>);
            let (Some(Ok(from)), Some(Ok(to))) = (times.next(), times.next()) else {
                return None;
            };
            watched = true;
            if from <= freeze_at && freeze_at <= to {
                return Some(Self::Upload);
            }
        }
        watched.then_some(Self::Echo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_rcvbuf_errors_come_from_the_udp_rows() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 7793 64 4 7876 3 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    UdpLite: 0 0 0 0 9 0\n";
        assert_eq!(udp_rcvbuf_errors(snmp), Some(3));
        assert_eq!(udp_rcvbuf_errors("Ip: Forwarding\nIp: 1\n"), None);
    }

    #[test]
    fn declared_losses_are_timed_from_the_origin() {
        let log =
            "event X\npackets-lost 100.250000 [7,8]\npackets-lost 101.5 [9]\nsummary requests=3\n";
        let losses = declared_losses(log, 100.0);
        assert_eq!(losses.len(), 2);
        assert!((losses[0].at_ms - 250.0).abs() < 1e-6);
        assert_eq!(losses[0].packets, "[7,8]");
        assert!((losses[1].at_ms - 1500.0).abs() < 1e-6);
        assert!(declared_losses("packets-lost garbage\n", 0.0).is_empty());
    }

    fn req(index: usize, response_ms: f64) -> Request {
        Request {
            index,
            send_ms: response_ms - 1.0,
            response_ms,
            service_ms: 1.0,
            server: String::new(),
        }
    }

    #[test]
    fn disruption_is_the_longest_wait_for_a_response() {
        // Back to back: each request sent when the previous answer came.
        let rs = [req(0, 1.0), req(1, 2.0), req(2, 250.0), req(3, 251.0)];
        let mut b2b = rs.to_vec();
        for i in 1..b2b.len() {
            b2b[i].send_ms = b2b[i - 1].response_ms;
        }
        assert_eq!(disruption(&b2b), (248.0, Some(2)));
        // Sporadic: the idle time between requests is no disruption.
        let sporadic = [req(0, 1.0), req(1, 10_001.0), req(2, 20_040.0)];
        assert_eq!(disruption(&sporadic), (1.0, Some(0)));
        let mut slow = sporadic.to_vec();
        slow[2].send_ms = 20_000.0;
        assert_eq!(disruption(&slow), (40.0, Some(2)));
        assert_eq!(disruption(&[]), (0.0, None));
    }

    #[test]
    fn split_outages_add_up() {
        // Back to back, 1 ms apart, with two outages: 117 ms and 226 ms.
        let mut t = 0.0;
        let mut reqs = Vec::new();
        for i in 0..20 {
            let sent = t;
            t += match i {
                5 => 117.0,
                12 => 226.0,
                _ => 1.0,
            };
            reqs.push(Request {
                send_ms: sent,
                ..req(i, t)
            });
        }
        let (excess, long) = excess_and_long_gaps(&reqs);
        assert_eq!(long, vec![117.0, 226.0]);
        assert!((excess - (116.0 + 225.0)).abs() < 1e-9);
        assert_eq!(
            disruption(&reqs).0,
            226.0,
            "the longest gap alone misses the first"
        );
        assert_eq!(excess_and_long_gaps(&[]), (0.0, Vec::new()));
    }

    #[test]
    fn confidence_interval_of_known_samples() {
        let (m, h) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-9);
        // s = 1, n = 3: 4.303 / sqrt(3)
        assert!((h - 4.303 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(mean_ci95(&[5.0]), (5.0, 0.0));
    }

    #[test]
    fn a_freeze_inside_a_busy_send_queue_hit_the_upload() {
        let log = "send-queue-busy 10.0 10.5\nsend-queue-busy 11.0 11.5\nsummary requests=3\n";
        assert_eq!(FreezeHit::classify(log, 10.2), Some(FreezeHit::Upload));
        assert_eq!(FreezeHit::classify(log, 11.5), Some(FreezeHit::Upload));
        assert_eq!(FreezeHit::classify(log, 10.7), Some(FreezeHit::Echo));
        assert_eq!(FreezeHit::classify("summary requests=3\n", 10.2), None);
        assert_eq!(
            FreezeHit::classify("send-queue-watch-failed EBADF\n", 10.2),
            None
        );
        assert_eq!(FreezeHit::classify("send-queue-busy 10.0 x\n", 10.2), None);
    }
}
