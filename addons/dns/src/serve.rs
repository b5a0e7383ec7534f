//! The running server: reflector stores on Services, their endpoints (core/v1 Endpoints, or
//! EndpointSlices from Kubernetes 1.21) and Nodes feed the index the handler answers from
//! (rebuilt whole, a burst of changes at a time); DNS is served over UDP and TCP only once
//! every store holds a full list.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Endpoints, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::forward::Forwarder;
use crate::index::Index;
use crate::metrics::Metrics;
use crate::records::Zone;
use crate::server::{Handler, SharedIndex};

/// What the server answers and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster's domain, e.g. cluster.local.
    pub zone: String,
    /// Where DNS is served, over UDP and TCP.
    pub listen: SocketAddr,
    /// Servers names outside the cluster are asked of.
    pub upstreams: Vec<SocketAddr>,
    /// Address ranges whose reverse names are the cluster's.
    pub reverse: Vec<ipnet::IpNet>,
    /// Clients that may ask for names outside the cluster besides the Nodes' addresses.
    pub recursion_for: Vec<ipnet::IpNet>,
    /// Endpoints from discovery.k8s.io/v1 EndpointSlices (Kubernetes 1.21 and later) rather
    /// than core/v1 Endpoints.
    pub endpoint_slices: bool,
}

/// Where headless Services' endpoints are read from.
enum EndpointStore {
    Endpoints(Store<Endpoints>),
    Slices(Store<EndpointSlice>),
}

impl EndpointStore {
    async fn wait_until_ready(&self) -> Result<(), ServeError> {
        match self {
            Self::Endpoints(s) => s
                .wait_until_ready()
                .await
                .map_err(|source| ServeError::Sync {
                    kind: "Endpoints",
                    source,
                }),
            Self::Slices(s) => s
                .wait_until_ready()
                .await
                .map_err(|source| ServeError::Sync {
                    kind: "EndpointSlice",
                    source,
                }),
        }
    }

    fn index(&self, services: &[Arc<Service>]) -> Index {
        let services = services.iter().map(|x| &**x);
        match self {
            Self::Endpoints(s) => Index::build(services, s.state().iter().map(|x| &**x)),
            Self::Slices(s) => Index::build_from_slices(services, s.state().iter().map(|x| &**x)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the {kind} watch never delivered a full list: {source}")]
    Sync {
        kind: &'static str,
        #[source]
        source: kube::runtime::reflector::store::WriterDropped,
    },
    #[error("binding {protocol} {addr}: {source}")]
    Bind {
        protocol: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the DNS server stopped: {0}")]
    Stopped(#[source] std::io::Error),
}

/// A store kept current by a watch on `api`; `notify` hears of every change.
fn watched<K>(api: Api<K>, notify: Arc<Notify>, tasks: &mut JoinSet<()>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    tasks.spawn(async move {
        // What the index never reads is dropped before the object is stored: managed
        // fields and annotations (kubectl's last-applied copy) are most of an object's size.
        let mut events = reflector(
            writer,
            watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(|o| {
                    o.meta_mut().managed_fields = None;
                    o.meta_mut().annotations = None;
                }),
        )
        .boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying")
                }
            }
        }
    });
    store
}

/// Serves until the server fails. `ready` turns true once the cluster zone is answered from
/// a full view of the cluster and the sockets are bound.
pub async fn serve(
    client: Client,
    options: Options,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Result<(), ServeError> {
    let index: SharedIndex = Arc::new(RwLock::new(Arc::new(Index::default())));
    let handler = Handler::new(
        Zone {
            name: options.zone.trim_end_matches('.').to_ascii_lowercase(),
            reverse: options.reverse.clone(),
        },
        index.clone(),
        Forwarder::new(options.upstreams.clone(), metrics.clone()),
        options.recursion_for.clone(),
        metrics.clone(),
    );
    let notify = Arc::new(Notify::new());
    // Every task of the server ends with it (a JoinSet aborts its tasks when dropped).
    let mut watches = JoinSet::new();
    let services = watched(
        Api::<Service>::all(client.clone()),
        notify.clone(),
        &mut watches,
    );
    let endpoints = if options.endpoint_slices {
        EndpointStore::Slices(watched(
            Api::<EndpointSlice>::all(client.clone()),
            notify.clone(),
            &mut watches,
        ))
    } else {
        EndpointStore::Endpoints(watched(
            Api::<Endpoints>::all(client.clone()),
            notify.clone(),
            &mut watches,
        ))
    };
    let nodes = watched(Api::<Node>::all(client), notify.clone(), &mut watches);
    // Answers only from a full view of the cluster.
    let sync = |kind| move |source| ServeError::Sync { kind, source };
    services.wait_until_ready().await.map_err(sync("Service"))?;
    endpoints.wait_until_ready().await?;
    nodes.wait_until_ready().await.map_err(sync("Node"))?;
    let rebuild = || {
        let mut next = endpoints.index(&services.state());
        next.set_nodes(nodes.state().iter().map(|n| &**n));
        let n = next.len();
        *index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        metrics.services.set(i64::try_from(n).unwrap_or(i64::MAX));
        metrics.index_rebuilds.inc();
        n
    };
    let n = rebuild();
    tracing::info!(services = n, "synced");

    let bind = |protocol| {
        move |source| ServeError::Bind {
            protocol,
            addr: options.listen,
            source,
        }
    };
    let udp = tokio::net::UdpSocket::bind(options.listen)
        .await
        .map_err(bind("UDP"))?;
    let tcp = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(bind("TCP"))?;
    let handler = Arc::new(handler);
    let mut servers = JoinSet::new();
    servers.spawn(crate::server::serve_udp(handler.clone(), udp));
    servers.spawn(crate::server::serve_tcp(handler, tcp));
    ready.store(true, Ordering::Relaxed);

    let index_task = async {
        loop {
            notify.notified().await;
            // Let a burst of changes settle into one index.
            tokio::time::sleep(Duration::from_millis(100)).await;
            rebuild();
        }
    };
    tokio::select! {
        () = index_task => Ok(()),
        r = servers.join_next() => Err(ServeError::Stopped(match r {
            Some(Ok(Err(e))) => e,
            Some(Err(e)) => std::io::Error::other(e.to_string()),
            Some(Ok(Ok(()))) | None => std::io::Error::other("the server loop ended"),
        })),
    }
}
