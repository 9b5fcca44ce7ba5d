//! Prometheus text exposition of a few counters and gauges, served over
//! plain HTTP on an optional port.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Family {
    help: &'static str,
    kind: &'static str,
    series: BTreeMap<Vec<(&'static str, String)>, f64>,
}

/// A registry of metric families; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Metrics {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: Labels,
        f: impl FnOnce(&mut f64),
    ) {
        let mut fams = self.families.lock().expect("metrics lock");
        let fam = fams.entry(name).or_default();
        fam.help = help;
        fam.kind = kind;
        f(fam.series.entry(labels).or_default());
    }

    /// Adds `by` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: Labels, by: f64) {
        self.with(name, help, "counter", labels, |v| *v += by);
    }

    /// Sets a counter to a total kept elsewhere (it must only grow).
    pub fn set_total(&self, name: &'static str, help: &'static str, labels: Labels, total: f64) {
        self.with(name, help, "counter", labels, |v| *v = total);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: Labels, to: f64) {
        self.with(name, help, "gauge", labels, |v| *v = to);
    }

    /// The text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let fams = self.families.lock().expect("metrics lock");
        let mut out = String::new();
        for (name, fam) in fams.iter() {
            let _ = writeln!(out, "# HELP {name} {}", fam.help);
            let _ = writeln!(out, "# TYPE {name} {}", fam.kind);
            for (labels, v) in &fam.series {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| {
                        format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
                    })
                    .collect();
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
                }
            }
        }
        out
    }

    /// Serves `GET /metrics` (any path, in fact) on `listener` until the
    /// task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let m = self.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 1024];
                // One read is enough for a GET; the body is ignored.
                let _ = sock.read(&mut req).await;
                let body = m.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_and_gauges_are_served_as_prometheus_text() {
        let m = Metrics::new();
        m.add(
            "lanyard_messages_total",
            "Messages sent",
            vec![("kind", "heartbeat".into())],
            2.0,
        );
        m.add(
            "lanyard_messages_total",
            "Messages sent",
            vec![("kind", "heartbeat".into())],
            1.0,
        );
        m.set("lanyard_queue_depth", "Queued messages", vec![], 4.0);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(m.clone().serve(listener));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK"));
        assert!(resp.contains("# TYPE lanyard_messages_total counter"));
        assert!(resp.contains("lanyard_messages_total{kind=\"heartbeat\"} 3"));
        assert!(resp.contains("lanyard_queue_depth 4"));
    }
}
