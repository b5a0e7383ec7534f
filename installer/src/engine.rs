//! The phase engine: runs a list of phases in order and owns what every phase shares: the
//! progress view (a line per host under an overall bar in a terminal, otherwise one JSON
//! event per line), the events, the timings and which phase is running (for the message
//! when a run is interrupted). Phases only do their work and report steps and actions.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::future::BoxFuture;
use strata_manifests::plan::{Action, Event, PhaseName};

/// One phase of a run.
pub trait Phase<C>: Sync {
    fn name(&self) -> PhaseName;
    /// Whether it has anything to do for this run (a phase that does not run is not
    /// reported).
    fn should_run(&self, _cx: &C) -> bool {
        true
    }
    fn run<'a>(&'a self, cx: &'a mut C) -> BoxFuture<'a, Result<()>>;
}

/// The terminal view: one line per host (its phase and step) under an overall bar.
struct Bars {
    multi: indicatif::MultiProgress,
    overall: indicatif::ProgressBar,
    hosts: BTreeMap<String, indicatif::ProgressBar>,
}

impl Bars {
    fn new(hosts: &[String], phases: usize) -> Self {
        let multi = indicatif::MultiProgress::new();
        let overall = multi.add(indicatif::ProgressBar::new(phases as u64));
        overall.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed:>4} [{bar:30}] {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let style = indicatif::ProgressStyle::with_template("  {spinner} {prefix:<12} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let hosts = hosts
            .iter()
            .map(|h| {
                let pb = multi.add(indicatif::ProgressBar::new_spinner());
                pb.set_style(style.clone());
                pb.set_prefix(h.clone());
                pb.enable_steady_tick(Duration::from_millis(120));
                (h.clone(), pb)
            })
            .collect();
        Self {
            multi,
            overall,
            hosts,
        }
    }
}

/// Where a run's progress goes. Shared by reference with every phase.
#[derive(Default)]
pub struct Reporter {
    json: bool,
    bars: Option<Bars>,
    current: Mutex<Option<PhaseName>>,
    timings: Mutex<Vec<(PhaseName, Duration)>>,
    /// One question in the terminal at a time (hosts are contacted in parallel).
    questions: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("json", &self.json)
            .finish()
    }
}

impl Reporter {
    /// JSON events (`json`), or text with a live view of `hosts` when a terminal watches.
    pub fn new(json: bool, hosts: &[String], phases: usize) -> Self {
        let bars = (!json).then(|| Bars::new(hosts, phases));
        Self {
            json,
            bars,
            ..Self::default()
        }
    }

    /// Plain text lines, no live view (commands that run one thing at a time).
    pub fn plain() -> Self {
        Self::default()
    }

    pub fn emit(&self, e: &Event) {
        if self.json {
            match serde_json::to_string(e) {
                Ok(line) => outln!("{line}"),
                Err(err) => eprintln!("strata: event not printable: {err}"),
            }
            return;
        }
        let text = match e {
            Event::PhaseStarted { phase } => format!("==> Running phase: {phase}"),
            Event::PhaseFinished { phase, seconds } => {
                format!("    {phase} done in {seconds:.1}s")
            }
            Event::Step { host, step, .. } => format!("    [{host}] {step}"),
            Event::Action { action, .. } => format!("    [{}] {action}", action.host),
            Event::Interrupted { phase } => match phase {
                Some(p) => format!("interrupted during phase {p}"),
                None => "interrupted".into(),
            },
        };
        match &self.bars {
            Some(b) => {
                let host = match e {
                    Event::Step { host, .. } => Some(host),
                    Event::Action { action, .. } => Some(&action.host),
                    _ => None,
                };
                match host.and_then(|h| b.hosts.get(h)) {
                    Some(pb) => pb.set_message(text.trim_start().to_owned()),
                    None => {
                        let _ = b.multi.println(text);
                    }
                }
            }
            None => outln!("{text}"),
        }
    }

    pub fn step(&self, phase: PhaseName, host: &str, step: impl Into<String>) {
        self.emit(&Event::Step {
            phase,
            host: host.into(),
            step: step.into(),
        });
    }

    pub fn action(&self, phase: PhaseName, action: Action) {
        self.emit(&Event::Action { phase, action });
    }

    /// Waits for the turn to ask a question in the terminal; the turn lasts as long as the
    /// guard.
    pub async fn question_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.questions.lock().await
    }

    /// Runs `f` with the live view paused (a question in the terminal).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bars {
            Some(b) => b.multi.suspend(f),
            None => f(),
        }
    }

    /// The phase running now, if any.
    pub fn current(&self) -> Option<PhaseName> {
        self.current.lock().ok().and_then(|p| *p)
    }

    fn started(&self, phase: PhaseName) {
        if let Ok(mut p) = self.current.lock() {
            *p = Some(phase);
        }
        if let Some(b) = &self.bars {
            b.overall.set_message(format!("phase {phase}"));
        }
        self.emit(&Event::PhaseStarted { phase });
    }

    fn finished(&self, phase: PhaseName, took: Duration) {
        if let Some(b) = &self.bars {
            b.overall.inc(1);
        }
        if let Ok(mut t) = self.timings.lock() {
            t.push((phase, took));
        }
        self.emit(&Event::PhaseFinished {
            phase,
            seconds: took.as_secs_f64(),
        });
    }

    /// Runs `work` as phase `phase`: reported, timed, remembered as the current phase.
    pub async fn phase<T>(
        &self,
        phase: PhaseName,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.started(phase);
        let t = Instant::now();
        let out = work.await?;
        self.finished(phase, t.elapsed());
        Ok(out)
    }

    /// Stops the live view; in text, prints the phase timings and the total.
    pub fn finish(&self, total: Option<Duration>) {
        if let Some(b) = &self.bars {
            for pb in b.hosts.values() {
                pb.finish();
            }
            b.overall.finish();
        }
        if self.json {
            return;
        }
        if let Some(total) = total {
            outln!("Phase timings:");
            for (p, d) in self.timings.lock().map(|t| t.clone()).unwrap_or_default() {
                outln!("  {:<14} {:>6.1}s", p.as_str(), d.as_secs_f64());
            }
            outln!("  {:<14} {:>6.1}s", "total", total.as_secs_f64());
        }
    }
}

/// Runs `phases` in order on `cx`; with `only`, the phases every other one needs
/// (`prerequisites`) and that one.
pub async fn run<C>(
    reporter: &Reporter,
    phases: &[&dyn Phase<C>],
    cx: &mut C,
    only: Option<PhaseName>,
    prerequisites: &[PhaseName],
) -> Result<()> {
    for p in phases {
        let name = p.name();
        let selected = only.is_none_or(|o| o == name || prerequisites.contains(&name));
        if !selected || !p.should_run(cx) {
            continue;
        }
        reporter.phase(name, p.run(cx)).await?;
    }
    Ok(())
}
