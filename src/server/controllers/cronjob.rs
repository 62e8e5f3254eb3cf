//! The CronJob controller: creates a Job at each scheduled time, as kube-controller-manager's
//! `pkg/controller/cronjob` (v2) does.
//!
//! Each reconcile lists the CronJob's Jobs, updates `status.active` and
//! `status.lastSuccessfulTime`, prunes finished Jobs beyond the history limits, and then, unless
//! suspended, finds the most recent scheduled time not yet run (since `lastScheduleTime`, or the
//! creation, bounded by `startingDeadlineSeconds`), applies `concurrencyPolicy`
//! (Allow / Forbid / Replace) and creates the Job `<cronjob>-<scheduled minutes since epoch>`.
//! It requeues itself for the next scheduled time.
//!
//! Schedules are parsed here ([`Schedule`]): five fields with `*`, `?`, lists, ranges, steps,
//! month and weekday names, and the `@yearly` / `@monthly` / `@weekly` / `@daily` / `@hourly`
//! macros, with cron's rule that day-of-month and day-of-week are OR-ed when both are
//! restricted. A small parser over jiff (already a dependency through k8s-openapi) was preferred
//! to a cron crate, which would have brought chrono and chrono-tz in besides.
//!
//! # Caveats
//! - `spec.timeZone` is resolved with jiff against the system's tz database
//!   (`/usr/share/zoneinfo`); a host without one only knows `UTC` / `Etc/UTC`.
//! - Jobs are deleted with background propagation; their pods go once a garbage collector runs.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use super::{controlled_by, controller_reference, not_found, publish, Context};

/// Annotation with the time a Job was scheduled for, in the CronJob's time zone.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// Missed start times beyond which the controller only starts the latest and warns.
const TOO_MANY_MISSED: usize = 100;

/// Why a schedule did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("expected exactly 5 fields, found {0}: {1}")]
    Fields(usize, String),
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("failed to parse {field} field {value:?}")]
    Field { field: &'static str, value: String },
}

/// Why a CronJob reconcile failed. All are retryable: the CronJob is requeued with a delay.
#[derive(Debug, thiserror::Error)]
pub enum CronJobError {
    #[error("cronjob {cronjob}: {action}")]
    Api {
        cronjob: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// A parsed five-field cron schedule: one bit per allowed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Day-of-month or day-of-week was `*` (then both must match, else either).
    day_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(
    name: &'static str,
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<(u64, bool), ScheduleError> {
    let bad = || ScheduleError::Field {
        field: name,
        value: text.to_string(),
    };
    let value = |s: &str| -> Result<u32, ScheduleError> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(min + i as u32);
        }
        s.parse::<u32>().map_err(|_| bad())
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s.parse::<u32>().map_err(|_| bad())?)),
            None => (part, None),
        };
        let (low, high) = if range == "*" || range == "?" {
            star = step.is_none();
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step.is_some() { max } else { v })
        };
        let step = step.unwrap_or(1);
        if step == 0 || low < min || high > max || low > high {
            return Err(bad());
        }
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    // Day-of-week 7 is Sunday too.
    if name == "day of week" && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a five-field schedule or a descriptor such as `@hourly`.
    pub fn parse(text: &str) -> Result<Schedule, ScheduleError> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(ScheduleError::Descriptor(other.to_string()))
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(ScheduleError::Fields(fields.len(), text.to_string()));
        };
        let (minutes, _) = field("minute", minute, 0, 59, &[])?;
        let (hours, _) = field("hour", hour, 0, 23, &[])?;
        let (days_of_month, dom_star) = field("day of month", dom, 1, 31, &[])?;
        let (months, _) = field("month", month, 1, 12, &MONTHS)?;
        let (days_of_week, dow_star) = field("day of week", dow, 0, 7, &WEEKDAYS)?;
        Ok(Schedule {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            day_star: dom_star || dow_star,
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        self.months & (1 << date.month()) != 0
            && if self.day_star {
                dom && dow
            } else {
                dom || dow
            }
    }

    /// The first scheduled time strictly after `after`, in `tz`; `None` if there is none within
    /// five years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let mut date = start.date();
        for _ in 0..(366 * 5) {
            if self.day_matches(date) {
                for hour in 0..24i8 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in 0..60i8 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let at = date.at(hour, minute, 0, 0);
                        if at <= start.with().second(0).subsec_nanosecond(0).build().ok()? {
                            continue;
                        }
                        let Ok(zoned) = tz.to_ambiguous_zoned(at).compatible() else {
                            continue;
                        };
                        if zoned.timestamp() > after {
                            return Some(zoned.timestamp());
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// The latest scheduled time in `(earliest, now]` and how many were missed in all (capped a
/// little above [`TOO_MANY_MISSED`]), and the next scheduled time after `now`.
pub fn missed_runs(
    schedule: &Schedule,
    tz: &TimeZone,
    earliest: Timestamp,
    now: Timestamp,
) -> (Option<Timestamp>, usize, Option<Timestamp>) {
    let mut latest = None;
    let mut count = 0;
    let mut cursor = earliest;
    while let Some(t) = schedule.next_after(cursor, tz) {
        if t > now {
            return (latest, count, Some(t));
        }
        latest = Some(t);
        count += 1;
        cursor = t;
        if count > TOO_MANY_MISSED {
            // Only the most recent one matters now: look for it in growing windows before now.
            for hours in [1, 25, 24 * 32, 24 * 367, 24 * 366 * 5] {
                let from = cursor.max(now - jiff::SignedDuration::from_hours(hours));
                let mut found = None;
                let mut at = from;
                while let Some(t) = schedule.next_after(at, tz).filter(|t| *t <= now) {
                    found = Some(t);
                    at = t;
                }
                if found.is_some() {
                    latest = found;
                    break;
                }
            }
            break;
        }
    }
    (latest, count, schedule.next_after(now, tz))
}

/// The name of the Job for a scheduled time: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// Starts the CronJob controller; it runs until `cancel`.
pub fn run(context: Context, cancel: CancellationToken) -> futures::future::BoxFuture<'static, ()> {
    async move {
        let cronjobs: Api<CronJob> = Api::all(context.client.clone());
        let jobs: Api<Job> = Api::all(context.client.clone());
        Controller::new(cronjobs, watcher::Config::default())
            .owns(jobs, watcher::Config::default())
            .graceful_shutdown_on(cancel.cancelled_owned())
            .run(reconcile, error_policy, Arc::new(context))
            .for_each(|result| async move {
                if let Err(err) = result {
                    debug!(error = %err, "cronjob reconcile");
                }
            })
            .await;
    }
    .boxed()
}

fn error_policy(cronjob: Arc<CronJob>, err: &CronJobError, _: Arc<Context>) -> Action {
    warn!(cronjob = %cronjob.name_any(), error = %err, "cronjob reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// A finished Job's terminal condition type (`Complete` or `Failed`).
fn finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    }
}

async fn reconcile(cronjob: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, CronJobError> {
    let name = cronjob.name_any();
    let namespace = cronjob.namespace().unwrap_or_default();
    let span = info_span!("reconcile", object.ref = %format!("{namespace}/{name}"));
    reconcile_cronjob(&cronjob, &ctx).instrument(span).await
}

async fn reconcile_cronjob(cronjob: &CronJob, ctx: &Context) -> Result<Action, CronJobError> {
    let name = cronjob.name_any();
    let namespace = cronjob.namespace().unwrap_or_default();
    let uid = cronjob.uid().unwrap_or_default();
    let api_err = |action: &'static str| {
        let cronjob = format!("{namespace}/{name}");
        move |source| CronJobError::Api {
            cronjob,
            action,
            source,
        }
    };
    let (Some(spec), None) = (cronjob.spec.as_ref(), &cronjob.metadata.deletion_timestamp) else {
        return Ok(Action::await_change());
    };
    let cronjobs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &namespace);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Timestamp::now();
    let old_status = cronjob.status.clone().unwrap_or_default();
    let mut status = old_status.clone();

    let mut jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(api_err("listing jobs"))?
        .items
        .into_iter()
        .filter(|j| controlled_by(j, &uid))
        .collect();
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));

    // Last successful time and history limits.
    let mut succeeded: Vec<&Job> = Vec::new();
    let mut failed: Vec<&Job> = Vec::new();
    for job in &jobs {
        match finished(job) {
            Some("Complete") => {
                succeeded.push(job);
                let done = job.status.as_ref().and_then(|s| s.completion_time.clone());
                if done.as_ref().map(|t| t.0) > status.last_successful_time.as_ref().map(|t| t.0) {
                    status.last_successful_time = done;
                }
            }
            Some(_) => failed.push(job),
            None => {}
        }
    }
    let keep_succeeded = spec.successful_jobs_history_limit.unwrap_or(3).max(0) as usize;
    let keep_failed = spec.failed_jobs_history_limit.unwrap_or(1).max(0) as usize;
    let mut pruned = Vec::new();
    for (list, keep) in [(&succeeded, keep_succeeded), (&failed, keep_failed)] {
        let excess = list.len().saturating_sub(keep);
        pruned.extend(list.iter().take(excess).map(|j| j.name_any()));
    }
    for job in &pruned {
        delete_job(ctx, cronjob, &jobs_api, job).await?;
    }
    let mut active: Vec<ObjectReference> = jobs
        .iter()
        .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
        .map(reference)
        .collect();

    let mut requeue = None;
    if spec.suspend != Some(true) {
        requeue = schedule(ctx, cronjob, &jobs_api, &mut status, &mut active, now).await?;
    }
    status.active = (!active.is_empty()).then_some(active);
    if status != old_status {
        let patch = json!({ "status": {
            "active": status.active,
            "lastScheduleTime": status.last_schedule_time,
            "lastSuccessfulTime": status.last_successful_time,
        }});
        cronjobs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("updating status"))?;
    }
    Ok(match requeue {
        Some(wait) => Action::requeue(wait),
        None => Action::await_change(),
    })
}

/// Starts the Job for the latest missed scheduled time, if the policies allow; returns when to
/// look again.
async fn schedule(
    ctx: &Context,
    cronjob: &CronJob,
    jobs_api: &Api<Job>,
    status: &mut k8s_openapi::api::batch::v1::CronJobStatus,
    active: &mut Vec<ObjectReference>,
    now: Timestamp,
) -> Result<Option<Duration>, CronJobError> {
    let Some(spec) = cronjob.spec.as_ref() else {
        return Ok(None);
    };
    let name = cronjob.name_any();
    let tz = match spec.time_zone.as_deref() {
        None => TimeZone::system(),
        Some(zone) => match TimeZone::get(zone) {
            Ok(tz) => tz,
            Err(err) => {
                let note = format!("invalid timeZone: {zone:?}: {err}");
                publish(ctx, cronjob, EventType::Warning, "UnknownTimeZone", note).await;
                return Ok(None);
            }
        },
    };
    let schedule = match Schedule::parse(&spec.schedule) {
        Ok(s) => s,
        Err(err) => {
            let note = format!("unparseable schedule: {:?} : {err}", spec.schedule);
            publish(
                ctx,
                cronjob,
                EventType::Warning,
                "UnparseableSchedule",
                note,
            )
            .await;
            return Ok(None);
        }
    };
    let mut earliest = status
        .last_schedule_time
        .as_ref()
        .or(cronjob.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    if let Some(deadline) = spec.starting_deadline_seconds {
        let bound = now - jiff::SignedDuration::from_secs(deadline);
        earliest = earliest.max(bound);
    }
    let (latest, missed, next) = missed_runs(&schedule, &tz, earliest, now);
    let wait = next.map(|t| t.duration_since(now).unsigned_abs() + Duration::from_millis(100));
    let Some(scheduled) = latest else {
        return Ok(wait);
    };
    if missed > TOO_MANY_MISSED {
        let note = format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew");
        publish(ctx, cronjob, EventType::Warning, "TooManyMissedTimes", note).await;
    }
    let job_name = job_name(&name, scheduled);
    if active
        .iter()
        .any(|j| j.name.as_deref() == Some(job_name.as_str()))
    {
        return Ok(wait);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            let note = "Not starting job because prior execution is still running and concurrency policy is Forbid".to_string();
            publish(ctx, cronjob, EventType::Normal, "JobAlreadyActive", note).await;
            // The Job's end triggers a reconcile; the missed time is still due then.
            return Ok(wait);
        }
        Some("Replace") => {
            for job in active.drain(..) {
                delete_job(
                    ctx,
                    cronjob,
                    jobs_api,
                    job.name.as_deref().unwrap_or_default(),
                )
                .await?;
            }
        }
        _ => {}
    }
    let job = job_for(cronjob, &job_name, scheduled, &tz);
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(created) => {
            let note = format!("Created job {}", created.name_any());
            publish(ctx, cronjob, EventType::Normal, "SuccessfulCreate", note).await;
            active.push(reference(&created));
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Already created for this time (a previous reconcile's status write was lost).
        }
        Err(err) => {
            let note = format!("Error creating job: {err}");
            publish(ctx, cronjob, EventType::Warning, "FailedCreate", note).await;
            return Err(CronJobError::Api {
                cronjob: name,
                action: "creating a job",
                source: err,
            });
        }
    }
    status.last_schedule_time = Some(Time(scheduled));
    Ok(wait)
}

async fn delete_job(
    ctx: &Context,
    cronjob: &CronJob,
    jobs_api: &Api<Job>,
    job: &str,
) -> Result<(), CronJobError> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match jobs_api.delete(job, &params).await {
        Ok(_) => {
            let note = format!("Deleted job {job}");
            publish(ctx, cronjob, EventType::Normal, "SuccessfulDelete", note).await;
            Ok(())
        }
        Err(err) if not_found(&err) => Ok(()),
        Err(source) => Err(CronJobError::Api {
            cronjob: cronjob.name_any(),
            action: "deleting a job",
            source,
        }),
    }
}

/// The Job for one scheduled time, from the CronJob's jobTemplate.
fn job_for(cronjob: &CronJob, name: &str, scheduled: Timestamp, tz: &TimeZone) -> Job {
    let template = cronjob
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let mut annotations = template_meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP.into(),
        scheduled
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
    );
    Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: cronjob.namespace(),
            labels: Some(template_meta.labels.unwrap_or_default()),
            annotations: Some(annotations),
            owner_references: Some(vec![controller_reference(cronjob)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(schedule: &str, after: &str, tz: &str) -> String {
        let tz = TimeZone::get(tz).unwrap_or(TimeZone::UTC);
        Schedule::parse(schedule)
            .expect("schedule")
            .next_after(ts(after), &tz)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn next_times() {
        assert_eq!(
            next("* * * * *", "2024-01-01T00:00:00Z", "UTC"),
            "2024-01-01T00:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2024-01-01T00:00:30Z", "UTC"),
            "2024-01-01T00:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2024-01-01T00:16:00Z", "UTC"),
            "2024-01-01T00:30:00Z"
        );
        assert_eq!(
            next("@hourly", "2024-01-01T10:00:00Z", "UTC"),
            "2024-01-01T11:00:00Z"
        );
        assert_eq!(
            next("@daily", "2024-01-01T10:00:00Z", "UTC"),
            "2024-01-02T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2024-03-01T10:00:00Z", "UTC"),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 9 * * mon-fri", "2024-01-05T10:00:00Z", "UTC"),
            "2024-01-08T09:00:00Z"
        );
        assert_eq!(
            next("30 2 1-3 feb,MAR *", "2024-01-05T10:00:00Z", "UTC"),
            "2024-02-01T02:30:00Z"
        );
        // Day-of-month and day-of-week both restricted: either matches.
        assert_eq!(
            next("0 0 13 * 5", "2024-01-01T00:00:00Z", "UTC"),
            "2024-01-05T00:00:00Z"
        );
        // Sunday as 7 and as 0.
        assert_eq!(
            next("0 0 * * 7", "2024-01-01T00:00:00Z", "UTC"),
            "2024-01-07T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 5-7", "2024-01-06T01:00:00Z", "UTC"),
            "2024-01-07T00:00:00Z"
        );
        assert_eq!(next("0 0 30 2 *", "2024-01-01T00:00:00Z", "UTC"), "");
    }

    #[test]
    fn time_zones() {
        if TimeZone::get("Europe/Berlin").is_err() {
            eprintln!("skipped: no tz database on this host");
            return;
        }
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        assert_eq!(
            next("0 9 * * *", "2024-01-01T00:00:00Z", "Europe/Berlin"),
            "2024-01-01T08:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "2024-07-01T00:00:00Z", "Europe/Berlin"),
            "2024-07-01T07:00:00Z"
        );
        // 02:30 does not exist on the spring-forward day; it runs at 03:30 local.
        assert_eq!(
            next("30 2 * * *", "2024-03-30T02:00:00Z", "Europe/Berlin"),
            "2024-03-31T01:30:00Z"
        );
    }

    #[test]
    fn bad_schedules() {
        assert!(Schedule::parse("* * * *").is_err());
        assert!(Schedule::parse("60 * * * *").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
        assert!(Schedule::parse("@sometimes").is_err());
        assert!(Schedule::parse("5-1 * * * *").is_err());
        assert!(Schedule::parse("* * * foo *").is_err());
    }

    #[test]
    fn missed_runs_pick_the_latest() {
        let s = Schedule::parse("*/10 * * * *").expect("schedule");
        let (latest, count, next) = missed_runs(
            &s,
            &TimeZone::UTC,
            ts("2024-01-01T00:00:00Z"),
            ts("2024-01-01T00:35:00Z"),
        );
        assert_eq!(latest, Some(ts("2024-01-01T00:30:00Z")));
        assert_eq!(count, 3);
        assert_eq!(next, Some(ts("2024-01-01T00:40:00Z")));
        let (latest, count, _) = missed_runs(
            &s,
            &TimeZone::UTC,
            ts("2020-01-01T00:00:00Z"),
            ts("2024-01-01T00:35:00Z"),
        );
        assert_eq!(latest, Some(ts("2024-01-01T00:30:00Z")));
        assert!(count > TOO_MANY_MISSED);
    }

    #[test]
    fn job_names_count_minutes() {
        assert_eq!(
            job_name("hello", ts("2024-01-01T00:01:00Z")),
            "hello-28401121"
        );
    }
}
