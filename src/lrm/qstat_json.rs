//! OpenPBS / PBS Pro's structured job status, `qstat -f -F json ID`.
//!
//! A job's name, its variable list (the submitter's environment with `qsub -V`) and its
//! paths are chosen by whoever submits it. In JSON they are string values and cannot add
//! or override a resource. Parsing is strict all the same: a field that appears twice, at
//! any level the pilot reads (including two entries for one job id), is refused rather than
//! resolved "last one wins", so output from a `qstat` that escapes strings badly cannot be
//! turned into an override.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};

/// The fields vmpilot reads from one job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QstatJob {
    /// `Resource_List.walltime`, as printed (`HH:MM:SS`).
    pub walltime: Option<String>,
    /// `resources_used.walltime`.
    pub walltime_used: Option<String>,
    /// `Resource_List.ncpus`.
    pub ncpus: Option<u64>,
    /// `Resource_List.mem` (`1gb`, `1048576kb`).
    pub mem: Option<String>,
    /// `Resource_List.nodes` (Torque style, `1:ppn=4`).
    pub nodes: Option<String>,
    /// `exec_host`.
    pub exec_host: Option<String>,
}

/// Parse `qstat -f -F json` and return job `id`'s fields. Errors are a short description.
pub fn parse(text: &str, id: &str) -> Result<QstatJob, String> {
    let status: Status = serde_json::from_str(text).map_err(|e| {
        let excerpt: String = text.trim().chars().take(200).collect();
        format!("not the JSON status of `qstat -f -F json` ({e}): {excerpt:?}")
    })?;
    let job = status
        .jobs
        .0
        .into_iter()
        .find(|(k, _)| k == id || k.split('.').next() == Some(id))
        .map(|(_, j)| j)
        .ok_or_else(|| format!("job {id} is not in the status"))?;
    let text_of = |v: Option<Scalar>| v.map(Scalar::into_text);
    Ok(QstatJob {
        walltime: text_of(job.resource_list.walltime),
        walltime_used: text_of(job.resources_used.walltime),
        ncpus: match job.resource_list.ncpus {
            None => None,
            Some(n) => Some(
                n.into_text()
                    .parse()
                    .map_err(|_| "Resource_List.ncpus is not a number".to_string())?,
            ),
        },
        mem: text_of(job.resource_list.mem),
        nodes: text_of(job.resource_list.nodes),
        exec_host: job.exec_host,
    })
}

#[derive(Deserialize)]
struct Status {
    #[serde(rename = "Jobs")]
    jobs: UniqueMap<RawJob>,
}

#[derive(Deserialize)]
struct RawJob {
    #[serde(rename = "Resource_List", default)]
    resource_list: Resources,
    #[serde(default)]
    resources_used: Resources,
    #[serde(default)]
    exec_host: Option<String>,
}

#[derive(Deserialize, Default)]
struct Resources {
    #[serde(default)]
    walltime: Option<Scalar>,
    #[serde(default)]
    ncpus: Option<Scalar>,
    #[serde(default)]
    mem: Option<Scalar>,
    #[serde(default)]
    nodes: Option<Scalar>,
}

/// A resource value: PBS prints counts as numbers and sizes and times as strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Number(u64),
    Text(String),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Number(n) => n.to_string(),
            Scalar::Text(t) => t,
        }
    }
}

/// A JSON object whose keys must be unique (serde's maps keep the last of two).
struct UniqueMap<T>(BTreeMap<String, T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for UniqueMap<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Unique<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Unique<T> {
            type Value = UniqueMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with unique keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, T>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueMap(out))
            }
        }
        d.deserialize_map(Unique(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape OpenPBS 23.06 prints for a running job (`qstat -f -F json 12.pbs`),
    /// trimmed to a few fields around the ones read.
    const OPENPBS: &str = r#"{
    "timestamp":1796302099,
    "pbs_version":"23.06.06",
    "pbs_server":"pbs",
    "Jobs":{
        "12.pbs":{
            "Job_Name":"vmpilot Resource_List.walltime = 999:00:00",
            "Job_Owner":"root@pbs",
            "resources_used":{"cpupercent":0, "cput":"00:00:00", "mem":"4kb", "ncpus":2, "walltime":"00:01:05"},
            "job_state":"R",
            "exec_host":"pbs/0*2",
            "Resource_List":{"mem":"1gb", "ncpus":2, "nodect":1, "place":"pack",
                "select":"1:ncpus=2:mem=1gb", "walltime":"00:10:00"},
            "Variable_List":{"PBS_O_HOME":"/root", "EVIL":"\",\"walltime\":\"999:00:00"}
        }
    }
}"#;

    #[test]
    fn a_running_openpbs_job() {
        let j = parse(OPENPBS, "12.pbs").unwrap();
        assert_eq!(j.walltime.as_deref(), Some("00:10:00"));
        assert_eq!(j.walltime_used.as_deref(), Some("00:01:05"));
        assert_eq!(j.ncpus, Some(2));
        assert_eq!(j.mem.as_deref(), Some("1gb"));
        assert_eq!(j.exec_host.as_deref(), Some("pbs/0*2"));
        assert_eq!(
            parse(OPENPBS, "12").unwrap(),
            j,
            "the short id names it too"
        );
        assert!(
            parse(OPENPBS, "13.pbs")
                .unwrap_err()
                .contains("not in the status")
        );
    }

    #[test]
    fn a_field_given_twice_is_refused_not_resolved() {
        // What badly escaped output with an injected override would look like.
        let twice = OPENPBS.replace(
            r#""walltime":"00:10:00"}"#,
            r#""walltime":"00:10:00", "walltime":"999:00:00"}"#,
        );
        assert!(parse(&twice, "12.pbs").unwrap_err().contains("duplicate"));
        let two_jobs = OPENPBS.replace(
            r#""Jobs":{"#,
            r#""Jobs":{"12.pbs":{"Resource_List":{"walltime":"999:00:00"}},"#,
        );
        assert!(
            parse(&two_jobs, "12.pbs")
                .unwrap_err()
                .contains("duplicate")
        );
    }

    #[test]
    fn anything_but_the_status_is_an_error() {
        for bad in ["", "qstat: Unknown Job Id 12.pbs", "{}", r#"{"Jobs": []}"#] {
            assert!(parse(bad, "12.pbs").is_err(), "{bad}");
        }
    }
}
