#!/usr/bin/env python3
# Writes deploy/grafana/limpet.json (run from the repository root). Edit this,
# not the JSON, then run it and commit both.
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []
pid = 0
y = 0
def row(title):
    global pid, y
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1
def ts(title, exprs, unit="short", x=0, w=8):
    global pid
    pid += 1
    panels.append({
        "type": "timeseries", "title": title, "id": pid, "datasource": DS,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)} for i, (e, l) in enumerate(exprs)],
    })
def line(*specs):
    global y
    x = 0
    w = 24 // len(specs)
    for title, exprs, unit in specs:
        ts(title, exprs, unit, x, w)
        x += w
    y += 8
I = 'instance=~"$instance"'
row("limpet-proxy")
line(
    ("Client connections", [(f'sum by (instance) (limpet_proxy_client_connections{{{I}}})', "{{instance}}")], "short"),
    ("Requests by class", [(f'sum by (class) (rate(limpet_proxy_requests_total{{{I}}}[$__rate_interval]))', "{{class}}")], "reqps"),
    ("Upstream response p99", [(f'histogram_quantile(0.99, sum by (le, pool) (rate(limpet_proxy_upstream_response_seconds_bucket{{{I}}}[$__rate_interval])))', "{{pool}}")], "s"),
)
line(
    ("Backends up", [(f'limpet_proxy_backend_up{{{I}}}', "{{pool}}/{{backend}}")], "short"),
    ("Open tunnels per backend", [(f'limpet_proxy_backend_tunnels{{{I}}}', "{{pool}}/{{backend}}")], "short"),
    ("Affinity outcomes", [(f'sum by (outcome) (rate(limpet_proxy_affinity_total{{{I}}}[$__rate_interval]))', "{{outcome}}")], "ops"),
)
line(
    ("Upgrades and connect errors", [(f'sum(rate(limpet_proxy_upgrades_total{{{I}}}[$__rate_interval]))', "upgrades"),
                                     (f'sum by (backend) (rate(limpet_proxy_upstream_connect_errors_total{{{I}}}[$__rate_interval]))', "connect errors {{backend}}")], "ops"),
    ("Limit rejections, reloads", [(f'sum by (limit) (rate(limpet_proxy_limit_rejections_total{{{I}}}[$__rate_interval]))', "{{limit}}"),
                                  (f'sum by (outcome) (increase(limpet_proxy_reloads_total{{{I}}}[$__range]))', "reloads {{outcome}}")], "short"),
    ("Certificate expiry", [(f'limpet_proxy_certificate_expiry_timestamp_seconds{{{I}}} - time()', "{{listener}} {{name}}")], "s"),
)
row("limpet-broker")
line(
    ("Clients", [(f'limpet_broker_connected_clients{{{I}}}', "{{instance}}")], "short"),
    ("Published / delivered", [(f'sum(rate(limpet_broker_messages_published_total{{{I}}}[$__rate_interval]))', "published"),
                               (f'sum(rate(limpet_broker_messages_delivered_total{{{I}}}[$__rate_interval]))', "delivered")], "ops"),
    ("Network", [(f'sum(rate(limpet_broker_net_input_bytes_total{{{I}}}[$__rate_interval]))', "in"),
                 (f'sum(rate(limpet_broker_net_output_bytes_total{{{I}}}[$__rate_interval]))', "out")], "Bps"),
)
line(
    ("Channels and patterns", [(f'limpet_broker_channels{{{I}}}', "channels"), (f'limpet_broker_patterns{{{I}}}', "patterns")], "short"),
    ("Slow-client disconnects", [(f'sum by (limit) (rate(limpet_broker_slow_client_disconnects_total{{{I}}}[$__rate_interval]))', "{{limit}}")], "ops"),
    ("Rejections and errors", [(f'sum by (limit) (rate(limpet_broker_limit_rejections_total{{{I}}}[$__rate_interval]))', "limit {{limit}}"),
                               (f'rate(limpet_broker_rejected_connections_total{{{I}}}[$__rate_interval])', "maxclients"),
                               (f'rate(limpet_broker_protocol_errors_total{{{I}}}[$__rate_interval])', "protocol errors")], "ops"),
)
row("limpet-node")
line(
    ("WebSocket clients", [(f'limpet_node_connections{{{I}}}', "{{instance}}")], "short"),
    ("Rooms", [(f'limpet_node_rooms{{{I}}}', "{{instance}}")], "short"),
    ("Messages", [(f'sum(rate(limpet_node_messages_in_total{{{I}}}[$__rate_interval]))', "in"),
                  (f'sum by (scope) (rate(limpet_node_messages_out_total{{{I}}}[$__rate_interval]))', "out {{scope}}")], "ops"),
)
line(
    ("Broker connection", [(f'limpet_node_broker_connected{{{I}}}', "{{instance}}")], "short"),
    ("Cross-node", [(f'sum(rate(limpet_node_cross_node_published_total{{{I}}}[$__rate_interval]))', "published"),
                    (f'sum(rate(limpet_node_cross_node_received_total{{{I}}}[$__rate_interval]))', "received"),
                    (f'sum(rate(limpet_node_cross_node_lost_total{{{I}}}[$__rate_interval]))', "lost")], "ops"),
    ("Closes, shedding, peers down", [(f'sum by (reason) (rate(limpet_node_closes_total{{{I}}}[$__rate_interval]))', "close {{reason}}"),
                                      (f'sum by (path) (rate(limpet_node_shed_total{{{I}}}[$__rate_interval]))', "shed {{path}}"),
                                      (f'sum(increase(limpet_node_peer_down_total{{{I}}}[$__rate_interval]))', "peers down")], "short"),
)
dash = {
    "title": "Limpet", "uid": "limpet", "tags": ["limpet"], "timezone": "", "editable": True,
    "schemaVersion": 39, "version": 1, "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "description": "limpet-proxy, limpet-broker and limpet-node: one row each. Metric names are checked against a live scrape by tests/tests/deploy_metrics.rs.",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "instance", "type": "textbox", "label": "instance (regex)", "query": ".*",
         "current": {"text": ".*", "value": ".*"}},
    ]},
    "panels": panels,
}
open("deploy/grafana/limpet.json", "w").write(json.dumps(dash, indent=2) + "\n")
