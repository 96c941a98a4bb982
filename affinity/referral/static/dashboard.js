// affinity dashboard: theme switch on every page; on the dashboard, polling, rendering and actions.
// Served from the referral itself (no CDN), loaded with `defer`, never inline (see the CSP).
"use strict";

(function () {
  const THEMES = ["auto", "light", "dark"];
  const THEME_KEY = "affinity-theme";
  const HISTORY = 60; // samples kept for the sparklines
  const REASON_TEXT = {
    new_client: "new client",
    expired: "token expired",
    invalid: "token invalid",
    misdirected: "token for another service",
    gone: "server gone",
    unhealthy: "server unhealthy",
    drain: "server draining",
    avoid: "client avoided its server",
  };

  // -- theme --------------------------------------------------------------------------

  function storedTheme() {
    try {
      const theme = window.localStorage.getItem(THEME_KEY);
      return THEMES.includes(theme) ? theme : "auto";
    } catch (e) {
      return "auto";
    }
  }

  function applyTheme(theme) {
    if (theme === "auto") {
      delete document.documentElement.dataset.theme;
    } else {
      document.documentElement.dataset.theme = theme;
    }
    const button = document.getElementById("theme");
    if (button) {
      button.textContent = "Theme: " + theme;
    }
  }

  function setUpTheme() {
    applyTheme(storedTheme());
    const button = document.getElementById("theme");
    if (!button) {
      return;
    }
    button.addEventListener("click", function () {
      const next = THEMES[(THEMES.indexOf(storedTheme()) + 1) % THEMES.length];
      try {
        window.localStorage.setItem(THEME_KEY, next);
      } catch (e) {
        // storage refused (private mode): the switch lasts for this page only
      }
      applyTheme(next);
    });
  }

  // -- helpers --------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function ago(at, now) {
    const seconds = Math.max(0, Math.round(now - at));
    if (seconds < 60) {
      return seconds + " s ago";
    }
    if (seconds < 3600) {
      return Math.round(seconds / 60) + " min ago";
    }
    return Math.round(seconds / 3600) + " h ago";
  }

  function fixed(value, digits) {
    return Number.isFinite(value) ? value.toFixed(digits) : "–";
  }

  function spark(id, values) {
    const line = document.querySelector("#" + id + " polyline");
    if (!line) {
      return;
    }
    const shown = values.filter(Number.isFinite);
    if (shown.length < 2) {
      line.setAttribute("points", "");
      return;
    }
    // The samples so far span the width; the oldest drops out past HISTORY.
    const top = Math.max.apply(null, shown.concat([1e-9]));
    const step = 120 / (values.length - 1);
    const points = [];
    values.forEach(function (value, i) {
      if (Number.isFinite(value)) {
        const y = 30 - (value / top) * 28;
        points.push((i * step).toFixed(1) + "," + y.toFixed(1));
      }
    });
    line.setAttribute("points", points.join(" "));
  }

  // -- the dashboard ----------------------------------------------------------------------

  function Dashboard() {
    this.csrf = document.querySelector('meta[name="affinity-csrf"]').content;
    this.interval = Number(document.body.dataset.interval || 1000);
    this.samples = []; // {time, totals, byServer}
    this.rates = [];
    this.ratios = [];
    this.pending = null; // {id, action} awaiting confirmation
    this.timer = null;
    const dialog = document.getElementById("confirm");
    const self = this;
    dialog.addEventListener("close", function () {
      const pending = self.pending;
      self.pending = null;
      if (pending && dialog.returnValue === "ok") {
        self.act(pending.id, pending.action);
      }
    });
  }

  Dashboard.prototype.start = function () {
    this.poll();
  };

  Dashboard.prototype.schedule = function () {
    const self = this;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(function () {
      self.poll();
    }, this.interval);
  };

  Dashboard.prototype.poll = function () {
    const self = this;
    fetch("/dashboard/api/status", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/dashboard");
          return null;
        }
        if (!response.ok) {
          throw new Error("the referral answered " + response.status);
        }
        return response.json();
      })
      .then(function (status) {
        if (status) {
          self.problem("");
          self.render(status);
        }
      })
      .catch(function (error) {
        self.problem("Cannot read the fleet's status: " + error.message + ". Retrying.");
      })
      .finally(function () {
        self.schedule();
      });
  };

  Dashboard.prototype.problem = function (text) {
    const node = document.getElementById("problem");
    node.textContent = text;
    node.hidden = !text;
  };

  Dashboard.prototype.record = function (status) {
    const byServer = {};
    status.servers.forEach(function (s) {
      byServer[s.id] = s.assignments;
    });
    const sample = { time: status.time, totals: status.totals, byServer: byServer };
    const previous = this.samples[this.samples.length - 1];
    this.samples.push(sample);
    if (this.samples.length > 2) {
      this.samples.shift();
    }
    if (!previous || sample.time <= previous.time) {
      return null;
    }
    const span = sample.time - previous.time;
    const now = sample.totals.assignments;
    const then = previous.totals.assignments;
    const sticky = now.sticky - then.sticky;
    const referred = now.referred - then.referred;
    const all = sticky + referred + (now.no_server - then.no_server);
    const delta = { span: span, previous: previous };
    this.rates.push((sticky + referred) / span);
    this.ratios.push(all > 0 ? sticky / all : NaN);
    if (this.rates.length > HISTORY) {
      this.rates.shift();
      this.ratios.shift();
    }
    return delta;
  };

  Dashboard.prototype.render = function (status) {
    const delta = this.record(status);
    const registry = document.getElementById("registry");
    registry.textContent =
      "registry " + status.registry.name + (status.registry.stale ? ": stale" : ": fresh");
    registry.className = "badge " + (status.registry.stale ? "stale" : "fresh");
    registry.title = status.registry.stale_reason || "index " + status.registry.index;
    document.getElementById("updated").textContent =
      "affinity " + status.version + " · updated " + new Date(status.time * 1000).toLocaleTimeString();
    this.renderCards(status);
    this.renderServers(status, delta);
    this.renderReasons(status, delta);
    this.renderFailures(status);
  };

  Dashboard.prototype.renderCards = function (status) {
    const rate = this.rates[this.rates.length - 1];
    const ratio = this.ratios[this.ratios.length - 1];
    document.getElementById("rate").textContent = fixed(rate, 1);
    document.getElementById("sticky").textContent = Number.isFinite(ratio)
      ? Math.round(ratio * 100) + " %"
      : "–";
    spark("spark-rate", this.rates);
    spark("spark-sticky", this.ratios);
    const passing = status.servers.filter(function (s) {
      return s.health === "passing";
    }).length;
    document.getElementById("counts").textContent = passing + " / " + status.servers.length + " passing";
    const list = document.getElementById("services");
    list.replaceChildren();
    Object.keys(status.services).forEach(function (name) {
      const s = status.services[name];
      const item = el("li", s.below_threshold ? "error" : "");
      item.textContent =
        name + ": " + s.assignable + " of " + s.total + " assignable · " + s.policy;
      list.appendChild(item);
    });
  };

  Dashboard.prototype.renderServers = function (status, delta) {
    const body = document.querySelector("#servers tbody");
    const rows = {};
    Array.prototype.forEach.call(body.rows, function (row) {
      rows[row.dataset.server] = row;
    });
    const self = this;
    const seen = {};
    status.servers.forEach(function (s) {
      seen[s.id] = true;
      let row = rows[s.id];
      if (!row) {
        row = self.newRow(s.id);
      }
      body.appendChild(row); // keeps the document's order
      self.fillRow(row, s, status.time, delta);
    });
    Object.keys(rows).forEach(function (id) {
      if (!seen[id]) {
        rows[id].remove();
      }
    });
  };

  Dashboard.prototype.newRow = function (id) {
    const row = el("tr");
    row.dataset.server = id;
    ["id", "service", "health", "load", "weight", "rate num", "failure", "action"].forEach(
      function (name) {
        row.appendChild(el("td", name));
      }
    );
    const button = el("button", "", "Drain");
    button.type = "button";
    const self = this;
    button.addEventListener("click", function () {
      self.confirm(row.dataset.server, button.dataset.action);
    });
    row.querySelector(".action").appendChild(button);
    return row;
  };

  Dashboard.prototype.fillRow = function (row, s, now, delta) {
    row.querySelector(".id").textContent = s.id;
    row.querySelector(".id").title = s.url;
    row.querySelector(".service").textContent = s.service;
    const health = row.querySelector(".health");
    health.replaceChildren(el("span", "badge health-" + s.health, s.health));
    if (s.draining) {
      health.appendChild(el("span", "badge draining", "draining"));
    }
    const load = s.load;
    row.querySelector(".load").textContent =
      Number(load.clients ?? load.active_clients).toFixed(1) +
      (load.capacity ? " / " + load.capacity : "") + " clients · " +
      load.inflight + " in flight";
    row.querySelector(".weight").textContent =
      s.effective_weight === s.weight ? String(s.weight) : s.effective_weight + " of " + s.weight;
    let rate = NaN;
    if (delta && s.id in delta.previous.byServer) {
      rate = (s.assignments - delta.previous.byServer[s.id]) / delta.span;
    }
    row.querySelector(".rate").textContent = fixed(rate, 1);
    const failure = s.last_failure;
    row.querySelector(".failure").textContent = failure.at
      ? failure.reason + " (" + ago(failure.at, now) + ")"
      : "–";
    const button = row.querySelector(".action button");
    button.dataset.action = s.draining ? "resume" : "drain";
    button.textContent = s.draining ? "Resume" : "Drain";
    button.className = s.draining ? "" : "danger";
  };

  Dashboard.prototype.renderReasons = function (status, delta) {
    const body = document.querySelector("#reasons tbody");
    body.replaceChildren();
    const now = status.totals.rereferrals;
    const then = delta ? delta.previous.totals.rereferrals : null;
    Object.keys(now).forEach(function (reason) {
      const row = el("tr");
      row.dataset.reason = reason;
      row.appendChild(el("td", "", REASON_TEXT[reason] || reason));
      row.appendChild(el("td", "num", String(now[reason])));
      const rate = then ? (now[reason] - (then[reason] || 0)) / delta.span : NaN;
      row.appendChild(el("td", "num", fixed(rate, 1)));
      body.appendChild(row);
    });
  };

  Dashboard.prototype.renderFailures = function (status) {
    const list = document.getElementById("failures");
    list.replaceChildren();
    const failed = status.servers
      .filter(function (s) {
        return s.last_failure.at;
      })
      .sort(function (a, b) {
        return b.last_failure.at - a.last_failure.at;
      })
      .slice(0, 8);
    if (!failed.length) {
      list.appendChild(el("li", "muted", "No failed check since this referral started."));
    }
    failed.forEach(function (s) {
      const item = el("li");
      item.appendChild(el("strong", "", s.id));
      item.appendChild(
        document.createTextNode(
          " · " + s.last_failure.reason + " · " + ago(s.last_failure.at, status.time)
        )
      );
      list.appendChild(item);
    });
  };

  Dashboard.prototype.confirm = function (id, action) {
    const text =
      action === "drain"
        ? "Drain " + id + "? No new clients go to it; its clients are sent elsewhere after the drain grace."
        : "Resume " + id + "? It takes new clients again.";
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = action === "drain" ? "Drain" : "Resume";
    this.pending = { id: id, action: action };
    document.getElementById("confirm").showModal();
  };

  Dashboard.prototype.act = function (id, action) {
    const self = this;
    fetch("/dashboard/api/servers/" + encodeURIComponent(id) + "/" + action, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Affinity-CSRF": this.csrf },
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) {
            throw new Error(body.detail || "the referral answered " + response.status);
          }
        });
      })
      .then(function () {
        self.problem("");
        self.poll();
      })
      .catch(function (error) {
        self.problem("Could not " + action + " " + id + ": " + error.message);
      });
  };

  setUpTheme();
  if (document.body.dataset.page === "dashboard") {
    new Dashboard().start();
  }
})();
