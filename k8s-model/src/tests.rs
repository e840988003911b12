//! Manifest parsing and validation tests. Expected values are written by hand.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use super::*;

fn parse(text: &str) -> (Vec<Object>, Vec<ManifestError>) {
    parse_documents(Path::new("x.yaml"), text)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn one_policy(text: &str) -> NetworkPolicy {
    let (objects, errors) = parse(text);
    assert!(errors.is_empty(), "{errors:?}");
    match objects.as_slice() {
        [Object::NetworkPolicy(p)] => p.clone(),
        other => panic!("expected one NetworkPolicy, got {other:?}"),
    }
}

const GOOD_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
const GOOD_POD: &str =
    "apiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: x}\nspec: {containers: [{name: c}]}\n";

/// Parses `good, bad, good` and checks the bad document's error exactly.
#[track_caller]
fn rejects(bad: &str, object: &str, field: &str, message: &str) {
    let text = format!("{GOOD_NS}---\n{bad}---\n{GOOD_POD}");
    let (objects, errors) = parse(&text);
    assert_eq!(objects.len(), 2, "the good documents still load: {errors:?}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e.document, 2);
    assert_eq!(e.object, object, "{e}");
    assert_eq!(e.field, field, "{e}");
    assert!(e.message.contains(message), "{e}");
}

const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\n";

fn np(spec: &str) -> String {
    format!("{NP}spec:\n{spec}")
}

#[test]
fn display_names_file_document_object_and_field() {
    let (_, errors) = parse(&format!(
        "{GOOD_NS}---\n{}",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-web, namespace: x}\n\
         spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}\n"
    ));
    assert_eq!(
        errors[0].to_string(),
        "x.yaml (document 2): NetworkPolicy x/allow-web: spec.ingress[0].ports[0].protocol: \
         \"ICMP\" is not one of TCP, UDP, SCTP"
    );
}

#[test]
fn rejects_missing_pod_selector() {
    rejects(
        &np("  ingress: []\n"),
        "NetworkPolicy x/np",
        "spec.podSelector",
        "is required",
    );
}

#[test]
fn rejects_missing_spec() {
    rejects(NP, "NetworkPolicy x/np", "spec", "is required");
}

#[test]
fn rejects_unknown_policy_type() {
    rejects(
        &np("  podSelector: {}\n  policyTypes: [Ingress, Foo]\n"),
        "NetworkPolicy x/np",
        "spec.policyTypes[1]",
        "\"Foo\" is not one of Ingress, Egress",
    );
}

#[test]
fn rejects_unknown_protocol() {
    rejects(
        &np("  podSelector: {}\n  egress: [{ports: [{port: 53, protocol: udp}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].ports[0].protocol",
        "\"udp\" is not one of TCP, UDP, SCTP",
    );
}

#[test]
fn rejects_port_zero_and_too_large() {
    rejects(
        &np("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].ports[0].port",
        "0 must be between 1 and 65535, inclusive",
    );
    rejects(
        &np("  podSelector: {}\n  ingress: [{ports: [{port: 80}, {port: 70000}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].ports[1].port",
        "70000 must be between 1 and 65535, inclusive",
    );
}

#[test]
fn rejects_bad_port_names() {
    rejects(
        &np("  podSelector: {}\n  ingress: [{ports: [{port: HTTP}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].ports[0].port",
        "lowercase",
    );
    rejects(
        &np("  podSelector: {}\n  ingress: [{ports: [{port: '80'}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].ports[0].port",
        "at least one letter",
    );
    rejects(
        &np("  podSelector: {}\n  ingress: [{ports: [{port: a-very-long-port-name}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].ports[0].port",
        "1 to 15 characters",
    );
}

#[test]
fn rejects_bad_end_ports() {
    rejects(
        &np("  podSelector: {}\n  egress: [{ports: [{endPort: 90}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].ports[0].endPort",
        "may not be specified when port is not specified",
    );
    rejects(
        &np("  podSelector: {}\n  egress: [{ports: [{port: 80, endPort: 79}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].ports[0].endPort",
        "79 must be greater than or equal to port (80)",
    );
    rejects(
        &np("  podSelector: {}\n  egress: [{ports: [{port: http, endPort: 90}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].ports[0].endPort",
        "may not be specified when port is a name",
    );
    rejects(
        &np("  podSelector: {}\n  egress: [{ports: [{port: 80, endPort: 65536}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].ports[0].endPort",
        "65536 must be between 1 and 65535",
    );
}

#[test]
fn rejects_ip_block_combined_with_selector() {
    rejects(
        &np("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].from[0].ipBlock",
        "may not be combined",
    );
}

#[test]
fn rejects_empty_peer() {
    rejects(
        &np("  podSelector: {}\n  ingress: [{from: [{podSelector: {}}, {}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].from[1]",
        "must specify a peer",
    );
}

#[test]
fn rejects_bad_cidrs() {
    rejects(
        &np("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].to[0].ipBlock.cidr",
        "not a valid CIDR",
    );
    rejects(
        &np("  podSelector: {}\n  egress: [{to: [{ipBlock: {except: [10.0.0.0/9]}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].to[0].ipBlock.cidr",
        "is required",
    );
}

#[test]
fn rejects_except_not_strictly_inside() {
    rejects(
        &np("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].to[0].ipBlock.except[1]",
        "\"10.1.0.0/24\" must be strictly within cidr \"10.0.0.0/16\"",
    );
    rejects(
        &np("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].to[0].ipBlock.except[0]",
        "strictly within",
    );
    rejects(
        &np("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 'fd00::/8', except: [10.0.0.0/24]}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].to[0].ipBlock.except[0]",
        "strictly within",
    );
}

#[test]
fn rejects_unknown_operator() {
    rejects(
        &np("  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}, {podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].from[1].podSelector.matchExpressions[0].operator",
        "\"Equals\" is not one of In, NotIn, Exists, DoesNotExist",
    );
}

#[test]
fn rejects_operator_value_mismatch() {
    rejects(
        &np("  podSelector: {matchExpressions: [{key: app, operator: In}]}\n"),
        "NetworkPolicy x/np",
        "spec.podSelector.matchExpressions[0].values",
        "must be non-empty when operator is In",
    );
    rejects(
        &np("  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: []}]}\n"),
        "NetworkPolicy x/np",
        "spec.podSelector.matchExpressions[0].values",
        "must be non-empty when operator is NotIn",
    );
    rejects(
        &np("  podSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}\n"),
        "NetworkPolicy x/np",
        "spec.podSelector.matchExpressions[0].values",
        "must be empty when operator is Exists",
    );
}

#[test]
fn rejects_bad_label_syntax() {
    rejects(
        &np("  podSelector: {matchLabels: {-app: web}}\n"),
        "NetworkPolicy x/np",
        "spec.podSelector.matchLabels",
        "label key \"-app\"",
    );
    rejects(
        &np("  podSelector: {matchExpressions: [{key: 'Example.com/app', operator: Exists}]}\n"),
        "NetworkPolicy x/np",
        "spec.podSelector.matchExpressions[0].key",
        "DNS subdomain",
    );
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: web-}}\nspec: {containers: [{name: c}]}\n",
        "Pod default/p",
        "metadata.labels.app",
        "must start and end with an alphanumeric character",
    );
    let long = "v".repeat(64);
    rejects(
        &np(&format!(
            "  podSelector: {{matchExpressions: [{{key: app, operator: In, values: [ok, {long}]}}]}}\n"
        )),
        "NetworkPolicy x/np",
        "spec.podSelector.matchExpressions[0].values[1]",
        "no more than 63 characters",
    );
}

#[test]
fn rejects_wrong_json_types() {
    rejects(
        &np("  podSelector: {}\n  ingress: {from: []}\n"),
        "NetworkPolicy x/np",
        "spec.ingress",
        "expected a list, got a mapping",
    );
    rejects(
        &np("  podSelector: {}\n  ingress: [{from: all}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].from",
        "expected a list, got a string",
    );
    rejects(
        &np("  podSelector: []\n"),
        "NetworkPolicy x/np",
        "spec.podSelector",
        "expected a mapping, got a list",
    );
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, labels: {version: 1}}\nspec: {containers: [{name: c}]}\n",
        "Pod x/p",
        "metadata.labels.version",
        "expected a string, got a number",
    );
    rejects(
        &np("  podSelector: {}\n  ingress: [{ports: [{port: [80]}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].ports[0].port",
        "expected a number or a name, got a list",
    );
    rejects(
        &np("  podSelector: {}\n  ingress: [{ports: [{port: 80.5}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].ports[0].port",
        "expected an integer",
    );
}

#[test]
fn rejects_bad_pods() {
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: []}\n",
        "Pod x/p",
        "spec.containers",
        "at least one container",
    );
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: [{name: c, ports: [{name: http}]}]}\n",
        "Pod x/p",
        "spec.containers[0].ports[0].containerPort",
        "is required",
    );
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.300}\n",
        "Pod x/p",
        "status.podIP",
        "not a valid IP address",
    );
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: Web}]}]}\n",
        "Pod x/p",
        "spec.containers[0].ports[0].name",
        "lowercase",
    );
}

#[test]
fn rejects_missing_identity_fields() {
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n",
        "Pod",
        "metadata.name",
        "is required",
    );
    rejects("kind: Pod\nmetadata: {name: p}\n", "", "apiVersion", "is required");
    rejects("apiVersion: v1\nmetadata: {name: p}\n", "", "kind", "is required");
    rejects("apiVersion: v1\nkind: Pod\n", "Pod", "metadata", "is required");
    rejects("- 1\n- 2\n", "", "", "must be a mapping");
    rejects(
        &format!(
            "apiVersion: extensions/v1beta1\n{}",
            &np("  podSelector: {}\n")["apiVersion: networking.k8s.io/v1\n".len()..]
        ),
        "NetworkPolicy x/np",
        "apiVersion",
        "served as networking.k8s.io/v1",
    );
}

#[test]
fn rejects_unknown_fields_that_would_widen_a_policy() {
    rejects(
        &np("  podSelector: {}\n  ingress: [{to: [{podSelector: {}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].to",
        "unknown field \"to\"",
    );
    rejects(
        &np("  podSelector: {}\n  ingress: [{from: [{podselector: {matchLabels: {a: b}}}]}]\n"),
        "NetworkPolicy x/np",
        "spec.ingress[0].from[0].podselector",
        "unknown field",
    );
    rejects(
        &np("  podSelector: {matchLabel: {app: web}}\n"),
        "NetworkPolicy x/np",
        "spec.podSelector.matchLabel",
        "unknown field",
    );
    rejects(
        &np("  podSelector: {}\n  egress: [{ports: [{port: 80, endport: 90}]}]\n"),
        "NetworkPolicy x/np",
        "spec.egress[0].ports[0].endport",
        "unknown field",
    );
}

#[test]
fn rejects_bad_object_names() {
    rejects(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Allow_Web, namespace: x}\nspec: {podSelector: {}}\n",
        "NetworkPolicy",
        "metadata.name",
        "must be a DNS subdomain",
    );
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: Shop}\nspec: {containers: [{name: c}]}\n",
        "Pod",
        "metadata.namespace",
        "must be a DNS label",
    );
    rejects(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
        "Namespace",
        "metadata.name",
        "DNS label",
    );
}

#[test]
fn policy_types_default_to_ingress() {
    let p = one_policy(&np("  podSelector: {}\n"));
    assert!(p.ingress && !p.egress);
}

#[test]
fn policy_types_default_adds_egress_when_egress_rules_exist() {
    let p = one_policy(&np("  podSelector: {}\n  egress: [{}]\n"));
    assert!(p.ingress && p.egress);
    assert_eq!(p.egress_rules, vec![Rule::default()]);
}

#[test]
fn policy_types_default_ignores_an_empty_egress_list() {
    let p = one_policy(&np("  podSelector: {}\n  egress: []\n"));
    assert!(p.ingress && !p.egress);
}

#[test]
fn explicit_policy_types_are_kept() {
    let p = one_policy(&np("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n"));
    assert!(!p.ingress && p.egress);
    assert_eq!(
        p.ingress_rules.len(),
        1,
        "rules are kept even when their direction is off"
    );
}

#[test]
fn full_policy_parses_to_the_expected_structure() {
    let p = one_policy(&np("  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchExpressions: [{key: role, operator: NotIn, values: [db]}]}
    - ipBlock: {cidr: 10.1.2.3/16, except: [10.1.9.0/24]}
    - ipBlock: {cidr: 'fd00::/8'}
    ports:
    - {port: 80}
    - {protocol: UDP, port: dns}
    - {protocol: SCTP, port: 1000, endPort: 2000}
    - {protocol: UDP}
  egress:
  - {}
"));
    let expected = NetworkPolicy {
        namespace: "x".into(),
        name: "np".into(),
        pod_selector: LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![],
        },
        ingress: true,
        egress: true,
        ingress_rules: vec![Rule {
            peers: Some(vec![
                Peer::Pods {
                    pod_selector: Some(LabelSelector {
                        match_labels: BTreeMap::new(),
                        match_expressions: vec![Requirement {
                            key: "role".into(),
                            operator: Operator::NotIn,
                            values: vec!["db".into()],
                        }],
                    }),
                    namespace_selector: Some(LabelSelector {
                        match_labels: labels(&[("team", "a")]),
                        match_expressions: vec![],
                    }),
                },
                Peer::IpBlock {
                    cidr: "10.1.0.0/16".parse().unwrap(),
                    except: vec!["10.1.9.0/24".parse().unwrap()],
                },
                Peer::IpBlockV6 {
                    cidr: "fd00::/8".into(),
                    except: vec![],
                },
            ]),
            ports: Some(vec![
                PortSpec {
                    protocol: 6,
                    port: Some(PortRef::Number(80)),
                    end_port: None,
                },
                PortSpec {
                    protocol: 17,
                    port: Some(PortRef::Name("dns".into())),
                    end_port: None,
                },
                PortSpec {
                    protocol: 132,
                    port: Some(PortRef::Number(1000)),
                    end_port: Some(2000),
                },
                PortSpec {
                    protocol: 17,
                    port: None,
                    end_port: None,
                },
            ]),
        }],
        egress_rules: vec![Rule {
            peers: None,
            ports: None,
        }],
    };
    assert_eq!(p, expected);
}

#[test]
fn pods_parse_ports_service_account_and_ip() {
    let (objects, errors) = parse(
        "apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: a
    ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]
  - name: b
    ports: [{containerPort: 9000, protocol: SCTP, name: sig}]
status: {podIP: 10.0.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: v6}
spec: {serviceAccountName: robot, containers: [{name: a}]}
status: {podIP: 'fd00::7'}
",
    );
    assert!(errors.is_empty(), "{errors:?}");
    let expected = Pod {
        namespace: "shop".into(),
        name: "web".into(),
        labels: labels(&[("app", "web")]),
        service_account: "default".into(),
        ports: vec![
            ContainerPort {
                name: "http".into(),
                port: 8080,
                protocol: 6,
            },
            ContainerPort {
                name: String::new(),
                port: 53,
                protocol: 17,
            },
            ContainerPort {
                name: "sig".into(),
                port: 9000,
                protocol: 132,
            },
        ],
        ip: Some(Ipv4Addr::new(10, 0, 0, 7)),
    };
    assert_eq!(objects[0], Object::Pod(expected));
    let Object::Pod(v6) = &objects[1] else {
        panic!("{:?}", objects[1]);
    };
    assert_eq!(
        (v6.namespace.as_str(), v6.service_account.as_str(), v6.ip),
        ("default", "robot", None)
    );
}

#[test]
fn namespaces_get_the_metadata_name_label() {
    let (objects, _) =
        parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, namespace: ignored, labels: {team: a}}\n");
    assert_eq!(
        objects,
        vec![Object::Namespace(Namespace {
            name: "shop".into(),
            labels: labels(&[("kubernetes.io/metadata.name", "shop"), ("team", "a")]),
        })]
    );
}

#[test]
fn other_kinds_are_kept_without_interpretation() {
    let (objects, errors) = parse(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {ports: whatever}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r, namespace: n}\n",
    );
    assert!(errors.is_empty());
    assert_eq!(
        objects,
        vec![
            Object::Other {
                kind: "ConfigMap".into(),
                namespace: "default".into(),
                name: "web".into(),
            },
            Object::Other {
                kind: "ClusterRole".into(),
                namespace: String::new(),
                name: "r".into(),
            },
        ]
    );
}

#[test]
fn yaml_syntax_error_stops_the_file_and_empty_documents_are_skipped() {
    let (objects, errors) = parse(&format!("---\n{GOOD_NS}---\n---\nkind: [unclosed\n---\n{GOOD_POD}"));
    assert_eq!(objects.len(), 1);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.starts_with("invalid YAML"), "{}", errors[0]);
}

#[test]
fn json_documents_parse() {
    let (objects, errors) = parse_documents(
        Path::new("p.json"),
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j"}}"#,
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(objects[0].kind(), "Namespace");
}

#[test]
fn read_dir_reads_manifest_files_in_name_order() {
    let dir = std::env::temp_dir().join(format!("moat-pc-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write");
    write("b.yaml", GOOD_POD);
    write(
        "a.json",
        r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "j"}}"#,
    );
    write("c.yml", "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\n");
    write("notes.txt", "kind: Pod\n");
    let m = read_dir(&dir);
    std::fs::remove_dir_all(&dir).expect("cleanup");
    let files: Vec<String> = m
        .objects
        .iter()
        .map(|(f, _)| {
            f.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(files, vec!["a.json", "b.yaml"]);
    assert_eq!(
        m.kinds(),
        BTreeMap::from([("Namespace".to_string(), 1), ("Pod".to_string(), 1)])
    );
    assert_eq!(m.errors.len(), 1);
    assert!(
        m.errors[0]
            .to_string()
            .contains("c.yml (document 1): Pod default/bad: spec: is required"),
        "{}",
        m.errors[0]
    );
}

#[test]
fn read_dir_of_a_missing_directory_is_an_error() {
    let m = read_dir(Path::new("/nonexistent/moat-manifests"));
    assert!(m.objects.is_empty());
    assert_eq!(m.errors.len(), 1);
    assert_eq!(m.errors[0].document, 0);
}

#[test]
fn kind_typos_and_unknown_kinds_of_known_groups_are_errors() {
    for (text, want) in [
        (
            "apiVersion: networking.k8s.io/v1\nkind: Networkpolicy\nmetadata: {name: p, namespace: x}\n",
            "did you mean \"NetworkPolicy\"",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetPol\nmetadata: {name: p, namespace: x}\n",
            "has no kind \"NetPol\"",
        ),
    ] {
        let (objects, errors) = parse(text);
        assert!(objects.is_empty());
        assert!(
            errors[0].to_string().contains(want) && errors[0].field == "kind",
            "{:?}",
            errors[0]
        );
    }
}

#[test]
fn selectors_on_per_replica_labels_are_refused() {
    let (_, errors) = parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {statefulset.kubernetes.io/pod-name: web-0}}\n",
    );
    assert!(
        errors[0].field.contains("matchLabels") && errors[0].message.contains("not part of security identities"),
        "{:?}",
        errors
    );
}

/// A "billion laughs" document: each level doubles... here tenfold, nine levels deep
/// (10^9 nodes if expanded). It is refused at once, and the file's other documents still
/// parse up to it.
#[test]
fn an_alias_bomb_is_refused_quickly() {
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        bomb += &format!("  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n");
    }
    let text = format!("{GOOD_NS}---\n{bomb}");
    let t = std::time::Instant::now();
    let (objects, errors) = parse(&text);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(objects.len(), 1, "the document before the bomb still counts");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.starts_with("invalid YAML"), "{}", errors[0]);
    assert_eq!(errors[0].document, 2);
}

#[test]
fn modest_aliases_and_yaml_1_2_scalars() {
    let (objects, errors) = parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n, labels: {on: yes}}\n\
         spec:\n  podSelector: &web {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: *web}]}]\n",
    );
    assert!(errors.is_empty(), "{errors:?}");
    let Object::NetworkPolicy(p) = &objects[0] else {
        panic!("{objects:?}")
    };
    let Peer::Pods {
        pod_selector: Some(peer),
        ..
    } = &p.ingress_rules[0].peers.as_ref().unwrap()[0]
    else {
        panic!("{p:?}")
    };
    assert_eq!(&p.pod_selector, peer, "the alias expands to the anchored selector");
}

#[test]
fn a_duplicate_key_is_rejected() {
    let (objects, errors) = parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\n\
         spec:\n  podSelector: {}\n  podSelector: {matchLabels: {app: web}}\n",
    );
    assert!(objects.is_empty(), "{objects:?}");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("invalid YAML"), "{}", errors[0]);
}

/// k8s-openapi skips unknown fields silently; Moat does not, for every kind it reads: a
/// misspelt field would silently change identities, selectors or services.
#[test]
fn unknown_fields_are_rejected_in_every_known_kind() {
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x, lables: {app: web}}\nspec: {containers: [{name: c}]}\n",
        "Pod x/p",
        "metadata.lables",
        "unknown field \"lables\"",
    );
    rejects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocl: UDP}]}]}\n",
        "Pod x/p",
        "spec.containers[0].ports[0].protocl",
        "unknown field",
    );
    rejects(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\nspek: {}\n",
        "Namespace shop",
        "spek",
        "unknown field",
    );
    rejects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {selectr: {app: web}, ports: [{port: 80}]}\n",
        "Service x/web",
        "spec.selectr",
        "unknown field",
    );
    rejects(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: x, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{adresses: [10.0.0.1]}]\n",
        "EndpointSlice x/s",
        "endpoints[0].adresses",
        "unknown field",
    );
}

#[test]
fn nodes_decode_with_pod_cidrs_and_addresses() {
    let (objects, errors) = parse(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {zone: a}}\n\
         spec: {podCIDRs: [10.244.1.0/24, 'fd00::/64']}\n\
         status: {addresses: [{type: InternalIP, address: 192.168.0.11}, {type: Hostname, address: n1}]}\n",
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        objects,
        vec![Object::Node(Node {
            name: "n1".into(),
            labels: labels(&[("zone", "a")]),
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            addresses: vec![std::net::Ipv4Addr::new(192, 168, 0, 11)],
        })]
    );
    rejects(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.244.1.0/33}\n",
        "Node n1",
        "spec.podCIDRs[0]",
        "",
    );
}

fn mnp(spec: &str) -> String {
    format!("apiVersion: moat.io/v1alpha1\nkind: MoatNetworkPolicy\nmetadata: {{name: m, namespace: x}}\nspec:\n{spec}")
}

/// A CiliumNetworkPolicy with apiVersion and kind changed: label sources, the namespace
/// label, string ports.
#[test]
fn moat_network_policy_reads_a_cilium_policy() {
    let text = mnp(
        "  endpointSelector: {matchLabels: {'k8s:app': backend}}\n  ingress:\n  - fromEndpoints:\n    - matchLabels: {'k8s:app': frontend}\n    - matchLabels: {'k8s:io.kubernetes.pod.namespace': ops, 'any:role': admin}\n    toPorts:\n    - ports: [{port: '80', protocol: TCP}, {port: '8080'}]\n  egress:\n  - toEndpoints:\n    - matchExpressions: [{key: 'k8s:io.cilium.k8s.namespace.labels.team', operator: In, values: [db]}]\n",
    );
    let (objects, errors) = parse(&text);
    assert!(errors.is_empty(), "{errors:?}");
    let [Object::MoatNetworkPolicy(m)] = objects.as_slice() else {
        panic!("{objects:?}")
    };
    let p = &m.policy;
    assert_eq!((p.namespace.as_str(), p.name.as_str()), ("x", "m"));
    assert!(p.ingress && p.egress);
    assert_eq!(p.pod_selector.match_labels, labels(&[("app", "backend")]));
    let peers = p.ingress_rules[0].peers.as_ref().unwrap();
    assert_eq!(
        peers[0],
        Peer::Pods {
            pod_selector: Some(LabelSelector {
                match_labels: labels(&[("app", "frontend")]),
                match_expressions: vec![]
            }),
            namespace_selector: None,
        },
        "no namespace label: the policy's own namespace"
    );
    assert_eq!(
        peers[1],
        Peer::Pods {
            pod_selector: Some(LabelSelector {
                match_labels: labels(&[("role", "admin")]),
                match_expressions: vec![]
            }),
            namespace_selector: Some(LabelSelector {
                match_labels: labels(&[(NAMESPACE_NAME_LABEL, "ops")]),
                match_expressions: vec![]
            }),
        }
    );
    let ports: Vec<String> = p.ingress_rules[0]
        .ports
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ports, ["TCP/80", "TCP/8080"]);
    let Peer::Pods {
        namespace_selector: Some(ns),
        ..
    } = &p.egress_rules[0].peers.as_ref().unwrap()[0]
    else {
        panic!("{:?}", p.egress_rules)
    };
    assert_eq!(ns.match_expressions[0].key, "team");
    assert_eq!(p.egress_rules[0].ports, None, "no toPorts: every port");
    assert!(m.http.is_empty());
}

#[test]
fn moat_network_policy_errors_name_the_field() {
    let obj = "MoatNetworkPolicy x/m";
    rejects(
        &mnp("  endpointSelector: {}\n  ingress:\n  - fromEndpoint: [{}]\n"),
        obj,
        "spec.ingress[0].fromEndpoint",
        "unknown field",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: http}]\n"),
        obj,
        "spec.ingress[0].toPorts[0].ports[0].port",
        "not a port number",
    );
    rejects(
        &mnp("  endpointSelector: {matchLabels: {'k8s:io.kubernetes.pod.namespace': y}}\n  ingress: []\n"),
        obj,
        "spec.endpointSelector",
        "own namespace",
    );
    rejects(
        &mnp("  endpointSelector: {matchLabels: {'reserved:host': ''}}\n"),
        obj,
        "spec.endpointSelector.matchLabels.reserved:host",
        "label source",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: '53', protocol: UDP}]\n      rules:\n        http: [{path: /}]\n"),
        obj,
        "spec.ingress[0].toPorts[0].ports[0].protocol",
        "need protocol TCP",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: '80'}]\n      rules:\n        http: [{headers: ['Bad Header: x']}]\n"),
        obj,
        "spec.ingress[0].toPorts[0].rules.http[0].headers[0]",
        "not a header name",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  egress:\n  - toPorts:\n    - ports: [{port: '80'}]\n      rules:\n        http: [{method: GET, path: '/api/.*'}]\n"),
        obj,
        "spec.egress[0].toPorts[0].rules.http",
        "HTTP rules on egress are not enforced",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: '80'}]\n      rules:\n        http: [{method: GET}, {path: '/(a|b)*a(a|b){12}'}]\n"),
        obj,
        "spec.ingress[0].toPorts[0].rules.http[1].path",
        "DFA states",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: '80'}]\n      rules:\n        http: [{path: '/api/(x'}]\n"),
        obj,
        "spec.ingress[0].toPorts[0].rules.http[0].path",
        "not a regular expression",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: '80'}]\n      rules:\n        http: [{method: GET, headers: ['X-Token']}]\n"),
        obj,
        "spec.ingress[0].toPorts[0].rules.http[0].headers",
        "header conditions are not enforced",
    );
    rejects(
        &mnp("  endpointSelector: {}\n  ingress: []\n").replace("moat.io/v1alpha1", "cilium.io/v2"),
        obj,
        "apiVersion",
        "served as moat.io/v1alpha1",
    );
}

#[test]
fn moat_network_policy_keeps_its_ingress_http_rules() {
    let text = mnp(
        "  endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend}}]\n    toPorts:\n    - ports: [{port: '80', protocol: TCP}, {port: '8080'}]\n      rules:\n        http:\n        - {method: GET, path: /}\n        - {method: 'GET|HEAD', path: '/public/.*', host: 'shop\\.example'}\n",
    );
    let (objects, errors) = parse(&text);
    assert!(errors.is_empty(), "{errors:?}");
    let Object::MoatNetworkPolicy(m) = &objects[0] else {
        panic!("{objects:?}")
    };
    assert_eq!(m.http.len(), 1);
    let h = &m.http[0];
    assert_eq!((h.direction, h.rule, h.ports.clone()), (1, 0, vec![80, 8080]));
    assert_eq!(h.field, "spec.ingress[0].toPorts[0].rules.http");
    assert_eq!(h.rules[1].method.as_deref(), Some("GET|HEAD"));
    assert_eq!(h.rules[1].host.as_deref(), Some("shop\\.example"));
}
