//! The Kubernetes kit in deploy/kubernetes parses, hangs together, and carries a mirror.toml
//! that berth accepts with DNS peer discovery through the headless Service.

use serde_yaml_ng::Value;

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/berth.yaml"))
        .unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("valid YAML"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn the_kubernetes_kit_hangs_together() {
    let docs = documents();
    let (cm, svc, ds) = (find(&docs, "ConfigMap"), find(&docs, "Service"), find(&docs, "DaemonSet"));
    let namespace = str_of(&ds["metadata"]["namespace"]);
    for d in [cm, svc] {
        assert_eq!(str_of(&d["metadata"]["namespace"]), namespace);
    }

    // The configuration is one berth accepts, with the env the DaemonSet provides.
    std::env::set_var("POD_IP", "10.1.2.3");
    std::env::set_var("BERTH_PEER_TOKEN", "t0ken");
    let loaded = berth::check::parse(str_of(&cm["data"]["mirror.toml"])).unwrap_or_else(|e| panic!("{e}"));
    let config = loaded.config();
    let peers = config.peers.as_ref().expect("[peers] in the ConfigMap");
    assert_eq!(peers.self_url.as_str(), format!("http://10.1.2.3:{}/", config.server.listen.port()));
    assert_eq!(peers.token, berth::config::Secret::new("t0ken").into());
    assert!(config.server.admin_listen.ip().is_loopback(), "admin stays on the node");

    // Peers are found through the headless Service's DNS name, on the registry port.
    assert_eq!(svc["spec"]["clusterIP"], "None", "the peer Service must be headless");
    let svc_name = str_of(&svc["metadata"]["name"]);
    let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        peers.dns.as_deref(),
        Some(format!("{svc_name}.{namespace}.svc.cluster.local:{port}").as_str())
    );
    assert_eq!(port, u64::from(config.server.listen.port()));

    // The Service selects the DaemonSet's pods.
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    let selector = svc["spec"]["selector"].as_mapping().unwrap();
    for (k, v) in selector {
        assert_eq!(&labels[k.as_str().unwrap()], v, "selector {k:?}");
    }
    assert_eq!(&ds["spec"]["selector"]["matchLabels"], &svc["spec"]["selector"]);

    // The pod: the config mounted where args point, the env that the config names, the cache
    // volume where storage.dir is, and the registry port.
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "containerd on the node pulls through 127.0.0.1");
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(str_of).collect();
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount_of = |name: &str| -> &str {
        str_of(
            &mounts.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no mount {name}"))
                ["mountPath"],
        )
    };
    let volumes = pod["volumes"].as_sequence().unwrap();
    let config_volume = volumes.iter().find(|v| v["configMap"]["name"] == cm["metadata"]["name"]).unwrap();
    assert_eq!(format!("{}/mirror.toml", mount_of(str_of(&config_volume["name"]))), config_path);
    assert_eq!(std::path::Path::new(mount_of("cache")), config.storage.dir);
    let env: Vec<&str> = c["env"].as_sequence().unwrap().iter().map(|e| str_of(&e["name"])).collect();
    assert!(env.contains(&"POD_IP") && env.contains(&"BERTH_PEER_TOKEN"), "{env:?}");
    let pod_ip = c["env"].as_sequence().unwrap().iter().find(|e| e["name"] == "POD_IP").unwrap();
    assert_eq!(pod_ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(port));
    assert_eq!(c["securityContext"]["runAsNonRoot"], true);
}
