//! Kubernetes Events (core/v1, which every supported release accepts for cluster-scoped
//! objects such as Nodes and UpdatePolicies; they land in the `default` namespace, where
//! `kubectl describe` finds them).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

#[derive(Clone)]
pub struct Events {
    api: Api<Event>,
    component: String,
    instance: String,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Events {
    pub fn new(client: Client, component: &str, instance: &str) -> Self {
        Self {
            api: Api::namespaced(client, "default"),
            component: component.into(),
            instance: instance.into(),
        }
    }

    /// Records one Event about `regarding`; a failure is logged, never fatal.
    pub async fn publish(
        &self,
        regarding: ObjectReference,
        reason: &str,
        message: &str,
        warning: bool,
    ) {
        let now = Timestamp::now();
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or("object"),
            now.as_nanosecond()
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: regarding,
            reason: Some(reason.into()),
            message: Some(message.chars().take(1024).collect()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: Some(self.instance.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            // No eventTime/reportingController: with them, 1.20 applies the events.k8s.io
            // rules, which refuse cluster-scoped objects in the default namespace.
            ..Default::default()
        };
        if let Err(e) = self.api.create(&PostParams::default(), &ev).await {
            tracing::warn!(component = %self.component, %reason, error = %e, "publishing an Event failed");
        }
    }
}
