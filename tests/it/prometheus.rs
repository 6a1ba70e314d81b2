//! Prometheus and Grafana: the rules, their unit tests and the scrape configuration under
//! `promtool` (which must also refuse a broken copy), every metric the rules and the dashboard
//! name present in a real scrape, and the dashboard's JSON and queries.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::helpers::{TempDir, scrape, server_with_metrics};

const RULES: &str = "deploy/prometheus/zen-server.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/zen-server.rules.test.yml";
const CONFIG: &str = "deploy/prometheus/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/zen-server.json";
/// The first line of the commented Kubernetes alternative in `prometheus.yml`.
const KUBERNETES_JOB: &str = "  # - job_name: zen-server";

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// `promtool ARGS`: whether it succeeded, and what it said.
fn promtool(args: &[&str], path: &Path) -> (bool, String) {
    let output = Command::new("promtool").args(args).arg(path).output().expect("promtool runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), said)
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|error| panic!("{DASHBOARD} is not JSON: {error}"))
}

/// Every panel of `dashboard` that shows data: rows are containers, their panels count.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            found.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            found.push(panel);
        }
    }
    found
}

/// Every query expression of `panel`.
fn expressions(panel: &Value) -> Vec<&str> {
    panel["targets"].as_array().into_iter().flatten().filter_map(|target| target["expr"].as_str()).collect()
}

/// Every `zen_` metric name in `text`: `zen_` not inside another word, then `[a-z0-9_]`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("zen_") {
        let inside_a_word =
            text[..start].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || "_:".contains(c));
        if inside_a_word {
            continue;
        }
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |length| start + length);
        names.insert(text[start..end].to_owned());
    }
    names
}

/// Those of `names` the exposition `scraped` does not have: a name is there if it has a `# TYPE`
/// line, or is a histogram's `_bucket`, `_sum` or `_count`.
fn missing_from(scraped: &str, names: &BTreeSet<String>) -> Vec<String> {
    let declared = |name: &str, kind: Option<&str>| {
        scraped.lines().any(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some("#")
                && words.next() == Some("TYPE")
                && words.next() == Some(name)
                && kind.is_none_or(|kind| words.next() == Some(kind))
        })
    };
    let histogram_part = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| declared(base, Some("histogram"))))
    };
    names.iter().filter(|name| !declared(name, None) && !histogram_part(name)).cloned().collect()
}

/// The Kubernetes scrape job that `prometheus.yml` holds commented out, uncommented, as the only
/// job of a configuration loading the same rules.
fn kubernetes_alternative() -> String {
    let config = read(CONFIG);
    let lines: Vec<String> = config
        .lines()
        .skip_while(|line| *line != KUBERNETES_JOB)
        .take_while(|line| line.starts_with("  # "))
        .map(|line| line.replacen("  # ", "  ", 1))
        .collect();
    assert!(lines.len() > 5, "no commented job starting {KUBERNETES_JOB:?} in {CONFIG}");
    format!("rule_files:\n  - zen-server.rules.yml\nscrape_configs:\n{}\n", lines.join("\n"))
}

/// A directory holding `config` as `prometheus.yml` beside a copy of the rules.
/// How many recording and alerting rules the rules file holds.
fn rules_in_file() -> usize {
    let rules = read(RULES);
    rules
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("- record:") || line.starts_with("- alert:"))
        .count()
}

fn config_beside_the_rules(config: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("prometheus");
    std::fs::copy(RULES, dir.path().join("zen-server.rules.yml")).unwrap();
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    (dir, path)
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn promtool_accepts_the_rules() {
    let (ok, said) = promtool(&["check", "rules"], Path::new(RULES));
    assert!(ok && said.contains(&format!("SUCCESS: {} rules found", rules_in_file())), "{said}");
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn the_rules_pass_their_unit_tests() {
    let (ok, said) = promtool(&["test", "rules"], Path::new(RULE_TESTS));
    assert!(ok && said.contains("SUCCESS"), "{said}");
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn promtool_rejects_a_broken_expression_and_a_wrong_expectation() {
    let rules = read(RULES);
    let healthy = "expr: sum by (job) (rate(zen_questions_answered_total[5m]))\n";
    assert!(rules.contains(healthy), "no {healthy:?} in {RULES} to break");
    let dir = TempDir::new("prometheus");
    let broken = dir.path().join("zen-server.rules.yml");
    std::fs::write(&broken, rules.replace(healthy, "expr: sum by (job) (rate(zen_questions_answered_total[5m])\n"))
        .unwrap();
    let (ok, said) = promtool(&["check", "rules"], &broken);
    assert!(!ok && said.contains("zen:questions_answered:rate5m"), "{said}");

    // The unit tests have teeth: an error ratio of 0.1 is not 0.2.
    std::fs::write(&broken, &rules).unwrap();
    let tests = read(RULE_TESTS);
    let expectation = "'zen:answer_errors:ratio_rate5m{job=\"zen-server\"}'\n            value: 0.1\n";
    assert!(tests.contains(expectation), "no {expectation:?} in {RULE_TESTS}");
    let wrong = dir.path().join("zen-server.rules.test.yml");
    std::fs::write(&wrong, tests.replace(expectation, &expectation.replace("0.1", "0.2"))).unwrap();
    let (ok, said) = promtool(&["test", "rules"], &wrong);
    assert!(!ok && said.contains("zen:answer_errors:ratio_rate5m"), "{said}");
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn promtool_accepts_the_scrape_configuration_and_finds_the_rules() {
    let (ok, said) = promtool(&["check", "config"], Path::new(CONFIG));
    assert!(
        ok && said.contains("SUCCESS: 1 rule files found")
            && said.contains(&format!("{} rules found", rules_in_file())),
        "{said}"
    );
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn the_commented_kubernetes_job_is_a_valid_scrape_configuration() {
    let config = kubernetes_alternative();
    let (_dir, path) = config_beside_the_rules(&config);
    let (ok, said) = promtool(&["check", "config"], &path);
    if !ok && said.contains("field kubernetes_sd_configs not found") {
        // Debian's promtool is built without Kubernetes discovery: check the relabelling, which
        // does not depend on it, with a static target in its place.
        let stand_in = config
            .replace("kubernetes_sd_configs:\n      - role: pod", "static_configs:\n      - targets: [\"pod:9106\"]");
        assert_ne!(stand_in, config, "no pod discovery to replace in:\n{config}");
        let (_dir, path) = config_beside_the_rules(&stand_in);
        let (ok, said) = promtool(&["check", "config"], &path);
        assert!(ok, "{said}\n{stand_in}");
    } else {
        assert!(ok, "{said}\n{config}");
    }
}

#[test]
#[ignore = "needs promtool: apt-get install prometheus"]
fn every_dashboard_query_is_valid_promql() {
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, expr) in panels(&dashboard).iter().flat_map(|panel| expressions(panel)).enumerate() {
        // Grafana's variables, as it would fill them in.
        let expr = expr.replace("$__rate_interval", "1m").replace("$job", "zen-server").replace("$instance", ".*");
        let expr = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!("      - record: dashboard:query{index}\n        expr: {expr}\n"));
    }
    let dir = TempDir::new("prometheus");
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, &rules).unwrap();
    let (ok, said) = promtool(&["check", "rules"], &path);
    assert!(ok, "{said}\n{rules}");
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_in_a_real_scrape() {
    let (_server, _config, metrics) = server_with_metrics("");
    let scraped = scrape(metrics);
    for (path, names) in [(RULES, metric_names(&read(RULES))), (DASHBOARD, metric_names(&read(DASHBOARD)))] {
        for name in ["zen_questions_answered_total", "zen_answer_latency_seconds_bucket"] {
            assert!(names.contains(name), "{path}: {name} not among {names:?}");
        }
        let missing = missing_from(&scraped, &names);
        assert!(missing.is_empty(), "{path} names {missing:?}, which a scrape lacks:\n{scraped}");
    }
    // A renamed metric is caught, a histogram's series and a recording rule are not mistaken.
    let renamed = metric_names("rate(zen_questions_total[5m]) / zen:questions_answered:rate5m");
    assert_eq!(missing_from(&scraped, &renamed), ["zen_questions_total"]);
    let parts = metric_names("zen_answer_latency_seconds_sum zen_answer_latency_seconds_count");
    assert!(missing_from(&scraped, &parts).is_empty());
    assert!(!missing_from(&scraped, &metric_names("zen_build_info_bucket")).is_empty());
}

#[test]
fn the_dashboard_is_json_and_every_panel_queries_zen_server() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "zen-server");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let panels = panels(&dashboard);
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        let title = &panel["title"];
        let expressions = expressions(panel);
        assert!(
            expressions.iter().any(|expr| expr.contains("zen_") || expr.contains("zen:")),
            "panel {title} queries no zen-server metric: {expressions:?}"
        );
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
    }
}
