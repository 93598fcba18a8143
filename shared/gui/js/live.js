// Live views: each view polls the API paths it shows, with If-None-Match, and redraws only when
// an answer changed (a 304 costs the control plane no body and the page no redraw). Polling stops
// while the tab is hidden and resumes, at once, when it is shown again. Why polling and not
// server-sent events: docs/gui.md#live-updates.

import { request } from "./api.js";

export const FAST = 1000; // zones and their online state: a zone killed shows offline within a second or so
export const NORMAL = 2000; // lists and details
export const SLOW = 5000; // aggregates that read every proxy (global-insight), counts per policy type
// A poll that took the control plane t ms waits at least COST_FACTOR * t before the next one: an
// answer that reads every proxy (global-insight with 10,000 of them takes ~1 s) is polled less often,
// so one open tab keeps a control plane busy at most about 1/COST_FACTOR of the time.
export const COST_FACTOR = 10;

const listeners = new Set();

// Called with {ok, at, error} after every poll: the header's "live" indicator.
export function onPoll(listener) {
  listeners.add(listener);
}

function report(state) {
  for (const listener of listeners) listener(state);
}

export class Poller {
  constructor() {
    this.jobs = [];
    this.stopped = false;
    this.visibility = () => {
      if (!document.hidden) this.refresh();
    };
    document.addEventListener("visibilitychange", this.visibility);
  }

  // Calls onData(body) now and whenever the answer at path changes; onError(error) when a poll
  // fails (null once it works again). Returns the job, for refresh(job).
  watch(path, interval, onData, onError = undefined) {
    const job = { path, interval, onData, onError, etag: null, timer: null, failing: false, running: null };
    this.jobs.push(job);
    this.run(job);
    return job;
  }

  async run(job) {
    if (this.stopped) return;
    clearTimeout(job.timer);
    if (document.hidden) return; // resumed by the visibility listener
    if (job.running) return job.running;
    let took = 0;
    job.running = (async () => {
      const started = performance.now();
      try {
        const answer = await request("GET", job.path, { etag: job.etag });
        took = performance.now() - started;
        if (this.stopped) return;
        if (answer.status !== 304) {
          job.etag = answer.etag;
          job.onData(answer.body);
        }
        if (job.failing) job.onError?.(null);
        job.failing = false;
        report({ ok: true, at: new Date() });
      } catch (error) {
        if (this.stopped) return;
        job.failing = true;
        job.etag = null; // redraw once it answers again
        if (job.onError) job.onError(error);
        else console.warn("poll failed", job.path, error);
        report({ ok: false, at: new Date(), error });
      } finally {
        job.running = null;
        if (!this.stopped) job.timer = setTimeout(() => this.run(job), Math.max(job.interval, COST_FACTOR * took));
      }
    })();
    return job.running;
  }

  // Poll now: after an action, so its effect shows at once.
  refresh(job = undefined) {
    for (const one of job ? [job] : this.jobs) {
      one.etag = null;
      this.run(one);
    }
  }

  stop() {
    this.stopped = true;
    document.removeEventListener("visibilitychange", this.visibility);
    for (const job of this.jobs) clearTimeout(job.timer);
    this.jobs = [];
  }
}
