//! Read at run time: `Type/id` asked of the sources of a scope in parallel (every source, one
//! FHIR version's, or the one source a source-qualified `fullUrl` names), answered from the
//! first source (in declared order) that has it, or 404. The answer is mapped with the read's
//! own mapping, else its resource type's, else the connector's.

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::json;

use super::{PullRuntime, RequestInfo, Scope, SourceError, all_failed, mapping_failure};
use crate::model::PullResource;
use crate::model::vocabulary::NotFoundReading;
use crate::runtime::cache::Answer;
use crate::runtime::problem::{Problem, ProblemKind};
use crate::runtime::upstream::{Call, SourceClient};

impl PullRuntime {
    /// The resource `Type/id` from the first source of `scope` that has it.
    pub async fn read(
        &self,
        res: &PullResource,
        id: &str,
        info: &RequestInfo,
        scope: &Scope,
    ) -> Result<Answer, Problem> {
        let Some(read) = &res.read else {
            return Err(Problem::new(
                ProblemKind::NotSupported,
                format!("`{}` has no read here", res.resource_type),
            ));
        };
        let clients = self.having_type(self.clients_in(scope)?, &res.resource_type)?;
        let params = json!({});
        let results = join_all(clients.iter().map(|client| {
            let params = &params;
            async move {
                let call = match &read.request {
                    Some(r) => crate::runtime::request::build(
                        &self.connector,
                        &client.source.url,
                        r,
                        params,
                        Some(id),
                    )
                    .map_err(|e| SourceError::Problem(e.into()))?,
                    None => fhir_read_call(client, &res.resource_type, id),
                };
                let reads = self.reads.read(&client.source.name, &res.resource_type);
                let mut calls = 0;
                let sent =
                    client.send_reading(&call, reads, &info.trace, info.deadline, &mut calls);
                let reply = match sent.await {
                    Ok(r) => r,
                    // A read's 404 (and 410) is "not found" unless the source says it is an
                    // error.
                    Err(f) if matches!(f.status, Some(404 | 410)) => {
                        return match client.source.statuses.not_found {
                            Some(NotFoundReading::Error) => Err(SourceError::Failed(f)),
                            _ => Ok(None),
                        };
                    }
                    Err(f) => return Err(SourceError::Failed(f)),
                };
                self.connector
                    .map_read(res, id, &reply.body)
                    .map_err(|e| mapping_failure(client, &e))
            }
        }))
        .await;
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(Some(resource)) => {
                    return Ok(Answer::new(
                        200,
                        serde_json::to_vec(&resource).unwrap_or_default(),
                        true,
                    ));
                }
                Ok(None) => {}
                Err(SourceError::Problem(p)) => return Err(p),
                Err(SourceError::Failed(f)) => failures.push(f),
            }
        }
        if !failures.is_empty() {
            return Err(all_failed(&failures));
        }
        let p = Problem::not_found(format!("{}/{id} is not known", res.resource_type));
        Ok(Answer::new(
            404,
            serde_json::to_vec(&p.outcome()).unwrap_or_default(),
            true,
        ))
    }
}

fn fhir_read_call(client: &SourceClient, resource_type: &str, id: &str) -> Call {
    let base = &client.source.url;
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/{resource_type}/{}",
        base.path().trim_end_matches('/'),
        crate::runtime::request::encode_segment(id)
    ));
    Call {
        method: Method::GET,
        url,
        headers: Vec::new(),
        body: None,
    }
}
