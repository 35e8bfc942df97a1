//! `concord inspect`: what the reconcile loop wants, sees and does, per object: a table of every
//! object, or for the objects a query names (a pod's name, "namespace/name", a container's name,
//! an id or a prefix) a summary a person reads at a glance, with `--history`.

use std::fmt::Write;
use std::time::Duration;

use concord::proto::introspection_client::IntrospectionClient;
use concord::proto::{JournalInfoRequest, ListObjectsRequest, ObjectStatus};

use super::client::{connect, Target};
use super::output::{ago, human_duration, short, structured, Format, Table};

/// What `concord inspect` was asked.
#[derive(clap::Args)]
pub struct Query {
    /// A pod's name or namespace/name (its sandbox and containers), a container's name, or an
    /// id or id prefix.
    #[arg(default_value = "")]
    pub query: String,
    /// Only objects of this kind (runtime_config, sandbox, container).
    #[arg(long, default_value = "")]
    pub kind: String,
    /// Each object's recent journal events and reconcile outcomes, oldest first.
    #[arg(long)]
    pub history: bool,
    /// Only objects whose last reconcile failed (retrying).
    #[arg(long)]
    pub failing: bool,
    /// Refresh every 2 seconds until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Format,
    /// Show env values in the configs (redacted by default: they may come from Secrets).
    #[arg(long)]
    pub show_config: bool,
}

/// How often `--watch` refreshes.
const WATCH_EVERY: Duration = Duration::from_secs(2);

pub async fn inspect(target: &Target, q: Query) -> anyhow::Result<()> {
    let mut client = IntrospectionClient::new(connect(target).await?);
    loop {
        let text = render(&mut client, &q).await?;
        if q.watch {
            // Clear the screen and draw again, as `watch` does.
            print!("\x1b[2J\x1b[H{text}");
            tokio::time::sleep(WATCH_EVERY).await;
        } else {
            print!("{text}");
            return Ok(());
        }
    }
}

/// One answer of the daemon, rendered.
async fn render(
    client: &mut IntrospectionClient<tonic::transport::Channel>,
    q: &Query,
) -> anyhow::Result<String> {
    let objects = client
        .list_objects(ListObjectsRequest {
            kind: q.kind.clone(),
            id_prefix: String::new(),
            query: q.query.clone(),
            failing: q.failing,
            history: q.history || !q.query.is_empty(),
            show_config: q.show_config,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .objects;
    if !q.query.is_empty() && objects.is_empty() {
        anyhow::bail!(
            "no object is named {:?} (a pod name, namespace/name, container name, id or id prefix)",
            q.query
        );
    }
    let journal = client
        .journal_info(JournalInfoRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if q.output != Format::Table {
        let value = serde_json::json!({
            "journal": journal,
            "objects": objects.iter().map(|o| object_json(o, q.history || !q.query.is_empty())).collect::<Vec<_>>(),
        });
        return structured(q.output, &value);
    }
    Ok(match q.query.is_empty() && !q.history {
        true => table(&objects, &journal),
        false => objects
            .iter()
            .map(|o| summary(o, &objects, q.history || !q.query.is_empty()))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// One object as JSON, its JSON strings (desired, observed, config) as nested values.
fn object_json(o: &ObjectStatus, history: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    for field in ["desired", "observed", "config"] {
        let parsed = serde_json::from_str::<serde_json::Value>(v[field].as_str().unwrap_or(""))
            .unwrap_or(serde_json::Value::Null);
        v[field] = parsed;
    }
    if !history {
        if let Some(m) = v.as_object_mut() {
            m.remove("history");
        }
    }
    v
}

fn table(objects: &[ObjectStatus], journal: &concord::proto::JournalInfoResponse) -> String {
    let mut t = Table::new(&[
        "KIND",
        "ID",
        "POD",
        "CONTAINER",
        "STATE",
        "GEN",
        "OBSERVED",
        "RETRIES",
        "LAST ERROR",
    ]);
    for o in objects {
        t.row(vec![
            o.kind.clone(),
            short(&o.id).to_string(),
            dash(&o.pod),
            dash(&o.container),
            dash(&o.state),
            o.generation.to_string(),
            o.observed_generation.to_string(),
            o.retries.to_string(),
            dash(&one_line(&o.last_error, 80)),
        ]);
    }
    format!(
        "{}\njournal {}: event {}, {} since the snapshot at {}\n",
        t.render(),
        journal.path,
        journal.last_seq,
        journal.events_since_snapshot,
        journal.snapshot_seq
    )
}

fn dash(s: &str) -> String {
    match s {
        "" | "/" => "-".into(),
        s => s.into(),
    }
}

/// `s` on one line, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.chars().count() > max {
        true => format!("{}…", line.chars().take(max).collect::<String>()),
        false => line,
    }
}

/// The reading of one object for a person: what is asked, what is, why they differ.
fn summary(o: &ObjectStatus, all: &[ObjectStatus], history: bool) -> String {
    let mut s = String::new();
    let what = match o.kind.as_str() {
        "container" => format!("container {} of pod {}", o.container, o.pod),
        "sandbox" => format!("pod {} (uid {})", o.pod, o.pod_uid),
        k => k.to_string(),
    };
    let _ = writeln!(s, "{what}");
    if !o.id.is_empty() {
        let _ = writeln!(s, "  id:          {}", o.id);
    }
    if o.removed_unix_nanos > 0 {
        let _ = writeln!(s, "  removed:     {}", ago(o.removed_unix_nanos));
        if !o.last_error.is_empty() {
            let _ = writeln!(
                s,
                "  failed:      {}: {}",
                ago(o.last_error_unix_nanos),
                one_line(&o.last_error, 300)
            );
        }
        history_lines(&mut s, o);
        return s;
    }
    if !o.state.is_empty() {
        let _ = writeln!(s, "  state:       {}", o.state);
    }
    let desired: serde_json::Value = serde_json::from_str(&o.desired).unwrap_or_default();
    let gap = o.generation.saturating_sub(o.observed_generation);
    let _ = writeln!(
        s,
        "  desired:     {} (generation {})",
        desired["desired"].as_str().unwrap_or("-"),
        o.generation
    );
    let _ = writeln!(
        s,
        "  converged:   generation {}{}",
        o.observed_generation,
        match gap {
            0 => String::new(),
            n => format!(" ({n} behind)"),
        }
    );
    let _ = writeln!(s, "  status:      {}", status_line(o));
    if !o.last_error.is_empty() {
        let _ = writeln!(
            s,
            "  last error:  {}: {}",
            ago(o.last_error_unix_nanos),
            one_line(&o.last_error, 300)
        );
    }
    if o.last_reconciled_unix_nanos > 0 {
        let _ = writeln!(
            s,
            "  reconciled:  {}, took {:?}",
            ago(o.last_reconciled_unix_nanos),
            Duration::from_nanos(o.last_duration_nanos)
        );
    }
    if !o.steps.is_empty() {
        let steps: Vec<String> = o
            .steps
            .iter()
            .map(|st| {
                format!(
                    "{} {:?}{}",
                    st.name,
                    Duration::from_millis(st.duration_nanos / 1_000_000),
                    if st.ok { "" } else { " FAILED" }
                )
            })
            .collect();
        let _ = writeln!(s, "  steps:       {}", steps.join(", "));
    }
    if o.kind == "sandbox" {
        for c in all
            .iter()
            .filter(|c| c.kind == "container" && c.pod_id == o.id)
        {
            let _ = writeln!(
                s,
                "  container:   {} {} {}",
                c.container,
                short(&c.id),
                c.state
            );
        }
    }
    if history {
        history_lines(&mut s, o);
    }
    s
}

fn history_lines(s: &mut String, o: &ObjectStatus) {
    if !o.history.is_empty() {
        let _ = writeln!(s, "  history:");
        for h in &o.history {
            let _ = writeln!(s, "    {}", history_line(h));
        }
    }
}

fn status_line(o: &ObjectStatus) -> String {
    let now = concord::clock::now_nanos();
    match (o.retries, o.next_retry_unix_nanos) {
        (0, _) if o.generation <= o.observed_generation && !o.pending => "converged".into(),
        (0, _) => "converging".into(),
        (n, 0) => format!("failing ({n} failed attempts)"),
        (n, due) => format!(
            "failing ({n} failed attempts), next retry in {}",
            human_duration(Duration::from_nanos(due.saturating_sub(now).max(0) as u64))
        ),
    }
}

fn history_line(h: &concord::proto::HistoryEntry) -> String {
    let when = chrono_like(h.unix_nanos);
    let source = match h.source.as_str() {
        "journal" => format!("journal #{}", h.seq),
        other => other.to_string(),
    };
    let took = match h.duration_nanos {
        0 => String::new(),
        n => format!(" in {:?}", Duration::from_millis(n / 1_000_000)),
    };
    let detail = match h.detail.as_str() {
        "" => String::new(),
        d => format!(": {}", one_line(d, 200)),
    };
    format!(
        "{when}  {source:<12} gen {:<3} {}{took}{detail}",
        h.generation, h.what
    )
}

/// HH:MM:SS.mmm (UTC) of `unix_nanos`.
fn chrono_like(unix_nanos: i64) -> String {
    let ms = unix_nanos / 1_000_000;
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}
