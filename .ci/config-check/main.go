// strata-config-check decodes a component configuration file strictly (unknown or
// misspelt fields are errors) into the upstream Go types of the Kubernetes release it is
// built with. Built inside the Kubernetes source tree by .ci/build-kubernetes.
//
// Usage: strata-config-check kubelet|kube-proxy|audit-policy FILE
package main

import (
	"fmt"
	"os"

	auditv1 "k8s.io/apiserver/pkg/apis/audit/v1"
	proxyv1alpha1 "k8s.io/kube-proxy/config/v1alpha1"
	kubeletv1beta1 "k8s.io/kubelet/config/v1beta1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: strata-config-check kubelet|kube-proxy|audit-policy FILE")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var target interface{}
	var apiVersion, kind string
	switch os.Args[1] {
	case "kubelet":
		c := &kubeletv1beta1.KubeletConfiguration{}
		target, apiVersion, kind = c, "kubelet.config.k8s.io/v1beta1", "KubeletConfiguration"
		err = yaml.UnmarshalStrict(data, c)
		if err == nil && (c.APIVersion != apiVersion || c.Kind != kind) {
			err = fmt.Errorf("apiVersion/kind %s/%s, want %s/%s", c.APIVersion, c.Kind, apiVersion, kind)
		}
	case "kube-proxy":
		c := &proxyv1alpha1.KubeProxyConfiguration{}
		target, apiVersion, kind = c, "kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration"
		err = yaml.UnmarshalStrict(data, c)
		if err == nil && (c.APIVersion != apiVersion || c.Kind != kind) {
			err = fmt.Errorf("apiVersion/kind %s/%s, want %s/%s", c.APIVersion, c.Kind, apiVersion, kind)
		}
	case "audit-policy":
		c := &auditv1.Policy{}
		target, apiVersion, kind = c, "audit.k8s.io/v1", "Policy"
		err = yaml.UnmarshalStrict(data, c)
		if err == nil && (c.APIVersion != apiVersion || c.Kind != kind) {
			err = fmt.Errorf("apiVersion/kind %s/%s, want %s/%s", c.APIVersion, c.Kind, apiVersion, kind)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown kind %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[2], err)
		os.Exit(1)
	}
	_ = target
	fmt.Printf("%s: valid %s %s\n", os.Args[2], apiVersion, kind)
}
