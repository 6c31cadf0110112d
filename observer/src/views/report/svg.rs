//! The report's charts, as inline SVG written here: no script, no external
//! file, so the page shows the same in any browser, in a mail client's
//! preview and printed. Each chart has its axes and labels in the SVG and a
//! `<title>` on what a pointer can rest on (the browser's own tooltip, no
//! JavaScript). Failures are drawn as steps, one per bucket: a burst is a
//! bar of its bucket's width, not a slope into its neighbours.

use maud::{html, Markup};

use super::{
    data::{Episode, Period, QueueSeries},
    thousands, utc,
};
use crate::diagnose::record::Kind;

/// The charts' inner width in the page's CSS pixels; the SVGs scale down
/// with the window (`viewBox`), never up.
pub const WIDTH: f64 = 1100.0;
const LEFT: f64 = 76.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// One series of a chart.
pub struct Series<'a> {
    pub label: String,
    pub color: &'static str,
    pub values: &'a [u64],
}

/// A round upper end for an axis, and the step between its ticks.
fn nice(max: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (1.0, 1.0);
    }
    let rough = max / 4.0;
    let mag = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= rough).unwrap_or(10.0 * mag);
    let step = step.max(1.0);
    ((max / step).ceil() * step, step)
}

struct Frame {
    height: f64,
    period: Period,
    top: f64,
    /// Where the plot begins: `LEFT` for the charts of numbers, so that
    /// their time axes line up; more for the timeline's kind names.
    left: f64,
}

impl Frame {
    fn new(height: f64, period: Period, top: f64) -> Frame {
        Frame { height, period, top, left: LEFT }
    }
    fn plot_w(&self) -> f64 {
        WIDTH - self.left - RIGHT
    }
    fn plot_h(&self) -> f64 {
        self.height - TOP - BOTTOM
    }
    /// The left edge of bucket `i` (`i` = buckets: the right end).
    fn x(&self, i: usize) -> f64 {
        self.left + self.plot_w() * i as f64 / self.period.buckets as f64
    }
    /// The x of a time in ms.
    fn x_ms(&self, ms: i64) -> f64 {
        let span = (self.period.buckets as i64 * self.period.width) as f64;
        self.left + self.plot_w() * ((ms - self.period.start) as f64 / span).clamp(0.0, 1.0)
    }
    fn y(&self, v: f64) -> f64 {
        TOP + self.plot_h() * (1.0 - (v / self.top).clamp(0.0, 1.0))
    }
}

/// A stepped outline through `values` (one level per bucket), from the
/// baseline `base` (per bucket too), as polygon points.
fn steps(f: &Frame, top: &[f64], base: &[f64]) -> String {
    let mut pts = Vec::with_capacity(top.len() * 4);
    for (i, v) in top.iter().enumerate() {
        pts.push(format!("{:.1},{:.1}", f.x(i), f.y(*v)));
        pts.push(format!("{:.1},{:.1}", f.x(i + 1), f.y(*v)));
    }
    for (i, v) in base.iter().enumerate().rev() {
        pts.push(format!("{:.1},{:.1}", f.x(i + 1), f.y(*v)));
        pts.push(format!("{:.1},{:.1}", f.x(i), f.y(*v)));
    }
    pts.join(" ")
}

/// A stepped line (no fill), with gaps where a value is `None`.
fn step_line(f: &Frame, values: &[Option<f64>]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                cur.push(format!("{:.1},{:.1}", f.x(i), f.y(*v)));
                cur.push(format!("{:.1},{:.1}", f.x(i + 1), f.y(*v)));
            }
            None => {
                if !cur.is_empty() {
                    lines.push(cur.join(" "));
                    cur.clear();
                }
            }
        }
    }
    if !cur.is_empty() {
        lines.push(cur.join(" "));
    }
    lines
}

/// Ticks of the time axis: every hour, 6 hours, day or week, whichever
/// gives a readable number of labels.
fn time_ticks(p: &Period) -> (i64, bool) {
    let span = p.buckets as i64 * p.width;
    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;
    match span {
        s if s <= 8 * H => (H, false),
        s if s <= 2 * D => (6 * H, false),
        s if s <= 16 * D => (D, true),
        _ => (7 * D, true),
    }
}

fn axes(f: &Frame, y_label: &str) -> Markup {
    let (_, step) = nice(f.top);
    let mut y_ticks = Vec::new();
    let mut v = 0.0;
    while v <= f.top + 1e-9 {
        y_ticks.push(v);
        v += step;
    }
    let (every, days) = time_ticks(&f.period);
    let first = (f.period.start + every - 1).div_euclid(every) * every;
    let end = f.period.start + f.period.buckets as i64 * f.period.width;
    let x_ticks: Vec<i64> = (0..).map(|k| first + k * every).take_while(|t| *t <= end).collect();
    let bottom = f.height - BOTTOM;
    html! {
        g class="axis" {
            @for t in &y_ticks {
                line x1=(f.left) x2=(WIDTH - RIGHT) y1=(format!("{:.1}", f.y(*t))) y2=(format!("{:.1}", f.y(*t)))
                    stroke="#e5e7eb" stroke-width="1" {}
                text x=(f.left - 6.0) y=(format!("{:.1}", f.y(*t) + 4.0)) text-anchor="end" font-size="11" fill="#4b5563" {
                    (thousands(*t as u64))
                }
            }
            @for t in &x_ticks {
                @let x = format!("{:.1}", f.x_ms(*t));
                line x1=(x) x2=(x) y1=(TOP) y2=(bottom + 4.0) stroke="#e5e7eb" stroke-width="1" {}
                text x=(x) y=(bottom + 18.0) text-anchor="middle" font-size="11" fill="#4b5563" {
                    @if days { (utc(*t).day_label()) } @else { (utc(*t).hm()) }
                }
            }
            line x1=(f.left) x2=(WIDTH - RIGHT) y1=(bottom) y2=(bottom) stroke="#6b7280" stroke-width="1" {}
            line x1=(f.left) x2=(f.left) y1=(TOP) y2=(bottom) stroke="#6b7280" stroke-width="1" {}
            text x="12" y=(TOP + f.plot_h() / 2.0) font-size="11" fill="#374151" text-anchor="middle"
                transform=(format!("rotate(-90 12 {:.1})", TOP + f.plot_h() / 2.0)) { (y_label) }
        }
    }
}

fn svg_open(height: f64, id: &str, label: &str, body: Markup) -> Markup {
    html! {
        svg id=(id) class="chart" viewBox=(format!("0 0 {WIDTH} {height}")) width=(WIDTH) height=(height)
            role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg" {
            title { (label) }
            (body)
        }
    }
}

/// Series stacked on each other, one step per bucket; a transparent column
/// per bucket carries the bucket's numbers as a tooltip.
pub fn stacked(id: &str, label: &str, period: Period, series: &[Series<'_>], y_label: &str) -> Markup {
    let height = 260.0;
    let totals: Vec<u64> = (0..period.buckets).map(|i| series.iter().map(|s| s.values[i]).sum()).collect();
    let max = totals.iter().copied().max().unwrap_or(0) as f64;
    let f = Frame::new(height, period, nice(max).0);
    let mut base = vec![0.0; period.buckets];
    let mut layers = Vec::new();
    for s in series {
        let top: Vec<f64> = base.iter().zip(s.values).map(|(b, v)| b + *v as f64).collect();
        layers.push((s, steps(&f, &top, &base)));
        base = top;
    }
    let body = html! {
        (axes(&f, y_label))
        @for (s, points) in &layers {
            polygon points=(points) fill=(s.color) fill-opacity="0.85" stroke=(s.color) stroke-width="0.5" {
                title { (s.label) }
            }
        }
        @for (i, total) in totals.iter().enumerate() {
            @if *total > 0 {
                rect x=(format!("{:.1}", f.x(i))) y=(TOP) width=(format!("{:.2}", f.x(i + 1) - f.x(i)))
                    height=(f.plot_h()) fill="transparent" {
                    title {
                        (utc(period.at(i)).full()) " +" (super::duration(period.width)) ": " (thousands(*total))
                        @for s in series { @if s.values[i] > 0 { "\n" (s.label) " " (thousands(s.values[i])) } }
                    }
                }
            }
        }
    };
    svg_open(height, id, label, body)
}

/// Accepted connections (filled) and outbound connects (dashed) per bucket.
pub fn load(id: &str, label: &str, period: Period, accepted: &[u64], connects: &[u64]) -> Markup {
    let height = 200.0;
    let max = accepted.iter().chain(connects).copied().max().unwrap_or(0) as f64;
    let f = Frame::new(height, period, nice(max).0);
    let zero = vec![0.0; period.buckets];
    let acc: Vec<f64> = accepted.iter().map(|v| *v as f64).collect();
    let con: Vec<Option<f64>> = connects.iter().map(|v| Some(*v as f64)).collect();
    let body = html! {
        (axes(&f, "connections"))
        polygon points=(steps(&f, &acc, &zero)) fill=(ACCEPTED) fill-opacity="0.55" stroke=(ACCEPTED_LINE)
            stroke-width="1.2" { title { "accepted connections" } }
        @for line in step_line(&f, &con) {
            polyline points=(line) fill="none" stroke=(CONNECTS) stroke-width="1.5" stroke-dasharray="5 3" {
                title { "outbound connects" }
            }
        }
    };
    svg_open(height, id, label, body)
}

pub const ACCEPTED: &str = "#5ec4b6";
pub const ACCEPTED_LINE: &str = "#1d6f66";
pub const CONNECTS: &str = "#7c3aed";
pub const QUEUE_COLORS: [&str; 5] = ["#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];

/// The deepest accept queue per bucket, one line per listener.
pub fn queues(id: &str, label: &str, period: Period, queues: &[QueueSeries]) -> Markup {
    let height = 200.0;
    let max = queues.iter().map(|q| q.peak).max().unwrap_or(0) as f64;
    let f = Frame::new(height, period, nice(max).0);
    let body = html! {
        (axes(&f, "queued connections"))
        @for (q, color) in queues.iter().zip(QUEUE_COLORS) {
            // A bucket without a row had an empty queue at every poll (only
            // non-empty queues are written).
            @let values: Vec<Option<f64>> = q.values.iter().map(|v| Some(f64::from(v.unwrap_or(0)))).collect();
            @for line in step_line(&f, &values) {
                polyline points=(line) fill="none" stroke=(color) stroke-width="1.8" {
                    title { (super::listener_name(q.netns, &q.address, q.port)) ": deepest queue " (q.peak) }
                }
            }
        }
    };
    svg_open(height, id, label, body)
}

/// The cell colour of `n` on a scale up to `max` (square root, so that a
/// few quiet hours are not all white next to one peak).
fn heat_color(n: u64, max: u64) -> &'static str {
    const RAMP: [&str; 8] = ["#fff3d6", "#fde0a0", "#fdc26b", "#fb9a45", "#f26b2f", "#de3f1f", "#b5201a", "#7f0f12"];
    if n == 0 || max == 0 {
        return "#f3f4f6";
    }
    let t = (n as f64 / max as f64).sqrt();
    RAMP[((t * RAMP.len() as f64).ceil() as usize).clamp(1, RAMP.len()) - 1]
}

pub const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Hour of day by weekday: one cell per hour, the count written in it.
pub fn heatmap(id: &str, label: &str, heat: &[[u64; 24]; 7]) -> Markup {
    let (cw, ch, left, top) = (38.0, 28.0, 48.0, 22.0);
    let right = 80.0;
    let width = left + 24.0 * cw + right;
    let height = top + 7.0 * ch + 30.0;
    let max = heat.iter().flatten().copied().max().unwrap_or(0);
    let body = html! {
        @for h in 0..24u32 {
            text x=(left + (f64::from(h) + 0.5) * cw) y=(top - 7.0) text-anchor="middle" font-size="11" fill="#4b5563" {
                (format!("{h:02}"))
            }
        }
        text x=(left + 24.0 * cw + 10.0) y=(top - 7.0) font-size="11" fill="#4b5563" { "per day" }
        @for (d, row) in heat.iter().enumerate() {
            @let y = top + d as f64 * ch;
            text x=(left - 8.0) y=(y + ch / 2.0 + 4.0) text-anchor="end" font-size="12" fill="#374151" { (WEEKDAYS[d]) }
            @for (h, n) in row.iter().enumerate() {
                @let x = left + h as f64 * cw;
                @let fill = heat_color(*n, max);
                g class="cell" data-weekday=(WEEKDAYS[d]) data-hour=(h) data-count=(n) {
                    rect x=(x + 1.0) y=(y + 1.0) width=(cw - 2.0) height=(ch - 2.0) rx="3" fill=(fill) {}
                    @if *n > 0 {
                        text x=(x + cw / 2.0) y=(y + ch / 2.0 + 4.0) text-anchor="middle" font-size="11"
                            fill=(if n * 3 > max * 2 { "#ffffff" } else { "#1f2937" }) { (compact(*n)) }
                    }
                    title { (WEEKDAYS[d]) " " (format!("{h:02}:00-{h:02}:59")) " UTC: " (thousands(*n)) " failures" }
                }
            }
            text class="day-total" data-weekday=(WEEKDAYS[d]) x=(left + 24.0 * cw + 10.0) y=(y + ch / 2.0 + 4.0)
                font-size="12" fill="#111827" { (thousands(row.iter().sum())) }
        }
        text x=(left) y=(height - 8.0) font-size="11" fill="#4b5563" {
            "Hours in UTC. Darker: more failures (square-root scale up to " (thousands(max)) ")."
        }
    };
    html! {
        svg id=(id) class="chart" viewBox=(format!("0 0 {width} {height}")) width=(width) height=(height)
            role="img" aria-label=(label) xmlns="http://www.w3.org/2000/svg" {
            title { (label) } (body)
        }
    }
}

/// A number in at most four characters, for a heat-map cell.
fn compact(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{}k", n / 1000),
        _ => format!("{}M", n / 1_000_000),
    }
}

/// The kind's colour in the diagnosis charts.
pub fn kind_color(k: Kind) -> &'static str {
    match k {
        Kind::NoListener => "#4e79a7",
        Kind::ListenerAddressMismatch => "#a0cbe8",
        Kind::AcceptQueueFull => "#e15759",
        Kind::SynFlood => "#b07aa1",
        Kind::FirewallDrop => "#76b7b2",
        Kind::FirewallReject => "#59a14f",
        Kind::ServerReset => "#f28e2b",
        Kind::HandshakeIncomplete => "#ff9da7",
        Kind::OutboundRefused => "#9c755f",
        Kind::OutboundTimeout => "#bab0ac",
        Kind::OutboundUnreachable => "#edc948",
        Kind::PortScan => "#6b7280",
    }
}

/// Every episode as a bar from its first to its last failure, one row per kind.
pub fn timeline(id: &str, label: &str, period: Period, kinds: &[Kind], episodes: &[(Kind, String, Episode)]) -> Markup {
    let row = 24.0;
    let height = TOP + row * kinds.len().max(1) as f64 + BOTTOM;
    let f = Frame { left: 150.0, ..Frame::new(height, period, 1.0) };
    let (every, days) = time_ticks(&period);
    let first = (period.start + every - 1).div_euclid(every) * every;
    let end = period.start + period.buckets as i64 * period.width;
    let ticks: Vec<i64> = (0..).map(|k| first + k * every).take_while(|t| *t <= end).collect();
    let bottom = height - BOTTOM;
    let body = html! {
        @for t in &ticks {
            @let x = format!("{:.1}", f.x_ms(*t));
            line x1=(x) x2=(x) y1=(TOP) y2=(bottom + 4.0) stroke="#e5e7eb" {}
            text x=(x) y=(bottom + 18.0) text-anchor="middle" font-size="11" fill="#4b5563" {
                @if days { (utc(*t).day_label()) } @else { (utc(*t).hm()) }
            }
        }
        @for (r, k) in kinds.iter().enumerate() {
            @let y = TOP + r as f64 * row;
            text x=(f.left - 8.0) y=(y + row / 2.0 + 4.0) text-anchor="end" font-size="11" fill="#374151" {
                (k.as_str())
            }
            line x1=(f.left) x2=(WIDTH - RIGHT) y1=(y + row) y2=(y + row) stroke="#f3f4f6" {}
            @for bar in bars(&f, episodes.iter().filter(|(ek, _, _)| ek == k)) {
                rect x=(format!("{:.1}", bar.x0)) y=(y + 4.0) width=(format!("{:.1}", bar.x1 - bar.x0))
                    height=(row - 8.0) rx="2" fill=(kind_color(*k)) {
                    title {
                        @if bar.episodes == 1 {
                            (k.as_str()) " " (bar.id) ": " (utc(bar.first).full()) " to " (utc(bar.last).full()) ", "
                            (thousands(bar.count)) " failures (" (bar.status) ")"
                        } @else {
                            (k.as_str()) ": " (bar.episodes) " episodes from " (utc(bar.first).full()) " to "
                            (utc(bar.last).full()) ", " (thousands(bar.count)) " failures"
                        }
                    }
                }
            }
        }
        line x1=(f.left) x2=(WIDTH - RIGHT) y1=(bottom) y2=(bottom) stroke="#6b7280" {}
    };
    svg_open(height, id, label, body)
}

/// One bar of the timeline: an episode, or the episodes whose bars would
/// touch (a month of a flapping service is thousands of episodes; the page
/// draws at most one bar per few pixels of a row, and says how many it holds).
struct Bar<'a> {
    x0: f64,
    x1: f64,
    first: i64,
    last: i64,
    count: u64,
    episodes: usize,
    id: &'a str,
    status: &'a str,
}

fn bars<'a>(f: &Frame, episodes: impl Iterator<Item = &'a (Kind, String, Episode)>) -> Vec<Bar<'a>> {
    let mut out: Vec<Bar<'a>> = Vec::new();
    for (_, id, e) in episodes {
        let x0 = f.x_ms(e.first);
        let x1 = f.x_ms(e.last).max(x0 + 3.0);
        match out.last_mut() {
            Some(b) if x0 <= b.x1 + 1.0 => {
                b.x1 = b.x1.max(x1);
                b.first = b.first.min(e.first);
                b.last = b.last.max(e.last);
                b.count += e.count;
                b.episodes += 1;
            }
            _ => out.push(Bar {
                x0,
                x1,
                first: e.first,
                last: e.last,
                count: e.count,
                episodes: 1,
                id,
                status: &e.status,
            }),
        }
    }
    out
}

/// A small bar chart of counts over the period, for a table cell.
pub fn spark(values: &[u64], color: &str) -> Markup {
    let (w, h) = (168.0, 24.0);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bw = w / values.len().max(1) as f64;
    html! {
        svg class="spark" viewBox=(format!("0 0 {w} {h}")) width=(w) height=(h) xmlns="http://www.w3.org/2000/svg" {
            line x1="0" x2=(w) y1=(h - 0.5) y2=(h - 0.5) stroke="#d1d5db" {}
            @for (i, v) in values.iter().enumerate() {
                @if *v > 0 {
                    @let bh = (*v as f64 / max * (h - 2.0)).max(1.5);
                    rect x=(format!("{:.2}", i as f64 * bw)) y=(format!("{:.2}", h - bh))
                        width=(format!("{:.2}", bw.max(1.0))) height=(format!("{bh:.2}")) fill=(color) {}
                }
            }
        }
    }
}

/// When each episode of a recurring diagnosis ran, over the period.
pub fn strip(period: Period, episodes: &[Episode], color: &str) -> Markup {
    let (w, h) = (240.0, 18.0);
    let span = (period.to - period.from).max(1) as f64;
    let x = |ms: i64| ((ms - period.from) as f64 / span).clamp(0.0, 1.0) * w;
    html! {
        svg class="spark" viewBox=(format!("0 0 {w} {h}")) width=(w) height=(h) xmlns="http://www.w3.org/2000/svg" {
            rect x="0" y=(h / 2.0 - 1.0) width=(w) height="2" fill="#e5e7eb" {}
            @for e in episodes {
                @let x0 = x(e.first);
                rect x=(format!("{x0:.1}")) y="2" width=(format!("{:.1}", (x(e.last) - x0).max(3.0))) height=(h - 4.0)
                    rx="1.5" fill=(color) {
                    title { (utc(e.first).full()) ": " (thousands(e.count)) " failures" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice(0.0), (1.0, 1.0));
        assert_eq!(nice(7.0), (8.0, 2.0));
        assert_eq!(nice(93.0), (100.0, 50.0));
        assert_eq!(nice(1234.0), (1500.0, 500.0));
    }

    #[test]
    fn heat_is_grey_when_zero_and_darkest_at_the_peak() {
        assert_eq!(heat_color(0, 10), "#f3f4f6");
        assert_eq!(heat_color(10, 10), "#7f0f12");
        assert_eq!(heat_color(1, 10_000), "#fff3d6");
    }
}
