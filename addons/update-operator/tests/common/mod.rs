//! The update operator's tests run against a real API server (strata-test-apiserver) for a
//! three-host cluster.

pub use strata_test_apiserver::ApiServer;

pub const CLUSTER: &str = "\
apiVersion: strata.dev/v1alpha1
kind: Cluster
metadata: {name: upd}
spec:
  platform: {local: {}}
  hosts:
  - {name: n1, address: 127.0.0.1, roles: [etcd, control-plane, worker]}
  - {name: n2, address: 127.0.0.2, roles: [worker]}
  - {name: n3, address: 127.0.0.3, roles: [worker]}
";
