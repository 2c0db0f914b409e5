//! Loading whole projects: lookup, names, merge, interpolation, every key, every error.

use std::path::Path;

use crate::*;

fn project_in(dir: &Path, files: &[(&str, &str)], opts: Options) -> Result<Project, Error> {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    load(&Options {
        cwd: dir.to_path_buf(),
        ..opts
    })
}

fn one(text: &str) -> Result<Project, Error> {
    let d = tempfile::tempdir().unwrap();
    project_in(
        d.path(),
        &[("compose.yaml", text)],
        Options {
            project_name: Some("proj".into()),
            ..Default::default()
        },
    )
}

fn err(text: &str) -> String {
    match one(text) {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn minimal_service_and_default_network() {
    let p = one("services:\n  web:\n    image: busybox\n").unwrap();
    let web = &p.services["web"];
    assert_eq!(web.image.as_deref(), Some("busybox"));
    assert!(web.networks.contains_key("default"));
    assert_eq!(p.networks["default"].name, "proj_default");
    assert_eq!(p.container_name(web), "proj-web-1");
    assert_eq!(p.image_name(web), "busybox");
}

#[test]
fn lookup_order_and_override() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("docker-compose.yml"),
        "services: {a: {image: x}}",
    )
    .unwrap();
    std::fs::write(d.path().join("compose.yaml"), "services: {b: {image: x}}").unwrap();
    std::fs::write(
        d.path().join("compose.override.yaml"),
        "services: {b: {user: nobody}}",
    )
    .unwrap();
    let files = find_files(d.path()).unwrap();
    assert_eq!(
        files,
        vec![
            d.path().join("compose.yaml"),
            d.path().join("compose.override.yaml")
        ]
    );
    let sub = d.path().join("sub/deeper");
    std::fs::create_dir_all(&sub).unwrap();
    assert_eq!(find_files(&sub).unwrap()[0], d.path().join("compose.yaml"));
    let p = load(&Options {
        cwd: sub,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p.services["b"].user.as_deref(), Some("nobody"));
    assert_eq!(p.working_dir, d.path());
}

#[test]
fn docker_compose_yml_and_its_override() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("docker-compose.yml"),
        "services: {a: {image: x}}",
    )
    .unwrap();
    std::fs::write(
        d.path().join("docker-compose.override.yml"),
        "services: {a: {image: y}}",
    )
    .unwrap();
    assert_eq!(find_files(d.path()).unwrap().len(), 2);
}

#[test]
fn no_file_found() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&Options {
        cwd: d.path().into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }));
    assert!(e.to_string().contains("-f"));
}

#[test]
fn project_name_sources() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("My App.Dir");
    std::fs::create_dir_all(&dir).unwrap();
    let files = [("compose.yaml", "services: {a: {image: x}}")];
    let p = project_in(&dir, &files, Options::default()).unwrap();
    assert_eq!(p.name, "myappdir");
    let env = Vars::from([("COMPOSE_PROJECT_NAME".to_string(), "fromenv".to_string())]);
    let p = project_in(
        &dir,
        &files,
        Options {
            env: env.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.name, "fromenv");
    let p = project_in(
        &dir,
        &files,
        Options {
            env,
            project_name: Some("flag".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.name, "flag");
    let e = project_in(
        &dir,
        &files,
        Options {
            project_name: Some("Bad Name".into()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::ProjectName(_)));
    let files = [("compose.yaml", "name: top\nservices: {a: {image: x}}")];
    assert_eq!(
        project_in(&dir, &files, Options::default()).unwrap().name,
        "top"
    );
    assert_eq!(normalize_project_name("__Web-App_1"), "web-app_1");
}

#[test]
fn project_name_from_dotenv() {
    let d = tempfile::tempdir().unwrap();
    let p = project_in(
        d.path(),
        &[
            (".env", "COMPOSE_PROJECT_NAME=dotenv\nTAG=1.2\n"),
            ("compose.yaml", "services: {a: {image: \"x:${TAG}\"}}"),
        ],
        Options::default(),
    )
    .unwrap();
    assert_eq!(p.name, "dotenv");
    assert_eq!(p.services["a"].image.as_deref(), Some("x:1.2"));
}

#[test]
fn process_env_wins_over_dotenv() {
    let d = tempfile::tempdir().unwrap();
    let p = project_in(
        d.path(),
        &[
            (".env", "TAG=dot\n"),
            ("compose.yaml", "services: {a: {image: \"x:${TAG}\"}}"),
        ],
        Options {
            env: Vars::from([("TAG".to_string(), "proc".to_string())]),
            project_name: Some("p".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.services["a"].image.as_deref(), Some("x:proc"));
}

#[test]
fn interpolation_forms_in_values() {
    let p = one(
        "services:\n  a:\n    image: \"x:${NOPE:-latest}\"\n    environment:\n      A: $${LITERAL}\n      B: ${NOPE-dflt}\n      C: ${NOPE:+alt}\n",
    )
    .unwrap();
    let a = &p.services["a"];
    assert_eq!(a.image.as_deref(), Some("x:latest"));
    assert_eq!(a.environment["A"].as_deref(), Some("${LITERAL}"));
    assert_eq!(a.environment["B"].as_deref(), Some("dflt"));
    assert_eq!(a.environment["C"].as_deref(), Some(""));
}

#[test]
fn required_variable_names_file_and_line() {
    let e = err("services:\n  a:\n    image: ${IMG:?set IMG to the image}\n");
    assert!(e.starts_with("compose.yaml:3:"), "{e}");
    assert!(e.contains("set IMG to the image"), "{e}");
    let e = err("services:\n  a:\n    image: ${IMG?}\n");
    assert!(e.contains("IMG"), "{e}");
}

#[test]
fn unknown_key_names_file_line_key() {
    let e = err("services:\n  web:\n    image: x\n    imag: y\n");
    assert!(
        e.starts_with("compose.yaml:4: services.web.imag: unknown key"),
        "{e}"
    );
    assert!(e.contains("did you mean \"image\""), "{e}");
    let e = err("servics: {}\n");
    assert!(e.contains("compose.yaml:1: servics: unknown key"), "{e}");
    let e = err("services:\n  web:\n    image: x\n    healthcheck:\n      tst: [CMD, true]\n");
    assert!(e.contains(":5: services.web.healthcheck.tst"), "{e}");
}

#[test]
fn extension_keys_are_allowed() {
    let p = one("x-common: &c\n  image: busybox\nservices:\n  a:\n    <<: *c\n    x-note: hi\n")
        .unwrap();
    assert_eq!(p.services["a"].image.as_deref(), Some("busybox"));
    assert!(one("version: \"3.9\"\nservices: {a: {image: x}}\n").is_ok());
}

#[test]
fn wrong_types() {
    let e = err("services:\n  a:\n    image: [x]\n");
    assert!(e.contains(":3: services.a.image: expected a string"), "{e}");
    let e = err("services:\n  a:\n    image: x\n    read_only: maybe\n");
    assert!(
        e.contains(":4: services.a.read_only: expected true or false"),
        "{e}"
    );
    let e = err("services:\n  a:\n    image: x\n    ports: 80\n");
    assert!(e.contains("services.a.ports: expected a list"), "{e}");
    let e = err("services:\n  a:\n    image: x\n    ports:\n      - \"99999:80\"\n");
    assert!(e.contains(":5: services.a.ports[0]: invalid port"), "{e}");
    let e = err("services:\n  a:\n    image: x\n    environment:\n      A: [1]\n");
    assert!(e.contains(":5: services.a.environment.A"), "{e}");
    let e = err("services:\n  a:\n    image: x\n    stop_grace_period: soon\n");
    assert!(e.contains("invalid duration"), "{e}");
    let e = err("services:\n  a:\n    image: x\n    restart: sometimes\n");
    assert!(e.contains("services.a.restart"), "{e}");
    let e = err("services: [a]\n");
    assert!(e.contains("services: expected a mapping"), "{e}");
    let e = err("services:\n  a:\n    build: {}\n    deploy:\n      resources:\n        limits:\n          cpus: lots\n");
    assert!(
        e.contains(":7: services.a.deploy.resources.limits.cpus"),
        "{e}"
    );
}

#[test]
fn service_needs_image_or_build() {
    let e = err("services:\n  a:\n    user: x\n");
    assert!(e.contains("services.a") && e.contains("image"), "{e}");
    let e = err("services:\n  a:\n");
    assert!(e.contains("services.a"), "{e}");
}

#[test]
fn yaml_syntax_error_has_line() {
    let e = err("services:\n  a:\n    image: [x\n");
    assert!(e.starts_with("compose.yaml:"), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn build_short_and_long() {
    let d = tempfile::tempdir().unwrap();
    let p = project_in(
        d.path(),
        &[(
            "compose.yaml",
            "services:\n  a:\n    build: ./web\n  b:\n    build:\n      context: ctx\n      dockerfile: Other.Dockerfile\n      args: [A=1, B]\n      target: final\n      cache_from: [img:cache]\n",
        )],
        Options {
            project_name: Some("p".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let a = &p.services["a"];
    assert_eq!(a.build.as_ref().unwrap().context, d.path().join("web"));
    assert_eq!(a.build.as_ref().unwrap().dockerfile, "Dockerfile");
    assert_eq!(p.image_name(a), "p-a");
    let b = p.services["b"].build.as_ref().unwrap();
    assert_eq!(b.context, d.path().join("ctx"));
    assert_eq!(b.dockerfile, "Other.Dockerfile");
    assert_eq!(b.args["A"].as_deref(), Some("1"));
    assert_eq!(b.args["B"], None);
    assert_eq!(b.target.as_deref(), Some("final"));
    assert_eq!(b.cache_from, vec!["img:cache"]);
}

#[test]
fn command_and_entrypoint() {
    let p = one("services:\n  a:\n    image: x\n    command: echo \"hello world\"\n    entrypoint: [/bin/sh, -c]\n  b:\n    image: x\n    entrypoint: \"\"\n").unwrap();
    assert_eq!(
        p.services["a"].command.as_ref().unwrap(),
        &vec!["echo".to_string(), "hello world".to_string()]
    );
    assert_eq!(
        p.services["a"].entrypoint.as_ref().unwrap(),
        &vec!["/bin/sh".to_string(), "-c".to_string()]
    );
    assert_eq!(p.services["b"].entrypoint.as_ref().unwrap().len(), 0);
}

#[test]
fn environment_map_list_and_env_file() {
    let d = tempfile::tempdir().unwrap();
    let p = project_in(
        d.path(),
        &[
            ("app.env", "FROM_FILE=1\nBOTH=file\n"),
            (
                "compose.yaml",
                "services:\n  a:\n    image: x\n    env_file: app.env\n    environment:\n      BOTH: inline\n      NUM: 010\n      FLAG: true\n      EMPTY:\n  b:\n    image: x\n    environment: [A=1, B=x=y, C]\n",
            ),
        ],
        Options {
            project_name: Some("p".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let a = &p.services["a"].environment;
    assert_eq!(a["FROM_FILE"].as_deref(), Some("1"));
    assert_eq!(a["BOTH"].as_deref(), Some("inline"));
    assert_eq!(a["NUM"].as_deref(), Some("010"));
    assert_eq!(a["FLAG"].as_deref(), Some("true"));
    assert_eq!(a["EMPTY"], None);
    let b = &p.services["b"].environment;
    assert_eq!(b["B"].as_deref(), Some("x=y"));
    assert_eq!(b["C"], None);
}

#[test]
fn missing_env_file_is_an_error() {
    let e = err("services:\n  a:\n    image: x\n    env_file: nope.env\n");
    assert!(e.contains(":4: services.a.env_file[0]: cannot read"), "{e}");
}

#[test]
fn ports_short_and_long() {
    let p = one("services:\n  a:\n    image: x\n    ports:\n      - \"8080:80\"\n      - 9000\n      - target: 53\n        published: \"5353\"\n        protocol: udp\n        host_ip: 127.0.0.1\n    expose: [\"3000\"]\n").unwrap();
    let ports = &p.services["a"].ports;
    assert_eq!(ports.len(), 3);
    assert_eq!((ports[0].published, ports[0].target), (Some(8080), 80));
    assert_eq!((ports[1].published, ports[1].target), (None, 9000));
    assert_eq!(ports[2].protocol, Protocol::Udp);
    assert_eq!(ports[2].published, Some(5353));
    assert_eq!(ports[2].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(p.services["a"].expose, vec!["3000"]);
    let e = err("services:\n  a:\n    image: x\n    ports:\n      - published: 80\n");
    assert!(e.contains("target"), "{e}");
}

#[test]
fn volumes_named_bind_long_and_undefined() {
    let d = tempfile::tempdir().unwrap();
    let p = project_in(
        d.path(),
        &[(
            "compose.yaml",
            "services:\n  a:\n    image: x\n    volumes:\n      - data:/data\n      - ./site:/www:ro\n      - type: volume\n        source: data\n        target: /d2\n        read_only: true\n      - type: bind\n        source: /etc/hosts\n        target: /h\n      - type: tmpfs\n        target: /t\n        tmpfs: {size: 1m}\nvolumes:\n  data:\n  ext:\n    external: true\n  named:\n    name: given\n",
        )],
        Options {
            project_name: Some("p".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let v = &p.services["a"].volumes;
    assert_eq!(v.len(), 5);
    assert_eq!(
        v[1].source,
        MountSource::Bind {
            source: d.path().join("site")
        }
    );
    assert!(v[1].read_only && v[2].read_only);
    assert_eq!(
        v[4].source,
        MountSource::Tmpfs {
            size: Some(1 << 20)
        }
    );
    assert_eq!(p.volumes["data"].name, "p_data");
    assert_eq!(p.volumes["ext"].name, "ext");
    assert!(p.volumes["ext"].external);
    assert_eq!(p.volumes["named"].name, "given");
    let e = err("services:\n  a:\n    image: x\n    volumes:\n      - nope:/data\n");
    assert!(
        e.contains(":5: services.a.volumes: undefined volume \"nope\""),
        "{e}"
    );
    let e = err(
        "services:\n  a:\n    image: x\n    volumes:\n      - type: cluster\n        target: /x\n",
    );
    assert!(e.contains("unsupported mount type"), "{e}");
}

#[test]
fn networks_list_map_aliases_and_undefined() {
    let p = one("services:\n  a:\n    image: x\n    networks:\n      front:\n        aliases: [www]\n      back:\n  b:\n    image: x\n    networks: [back]\nnetworks:\n  front:\n  back:\n    name: shared-back\n").unwrap();
    assert_eq!(p.services["a"].networks["front"].aliases, vec!["www"]);
    assert!(p.services["b"].networks.contains_key("back"));
    assert_eq!(p.networks["front"].name, "proj_front");
    assert_eq!(p.networks["back"].name, "shared-back");
    assert!(!p.networks.contains_key("default"));
    let e = err("services:\n  a:\n    image: x\n    networks: [nope]\n");
    assert!(
        e.contains(":4: services.a.networks: undefined network \"nope\""),
        "{e}"
    );
    let p =
        one("services:\n  a:\n    image: x\nnetworks:\n  default:\n    name: custom\n").unwrap();
    assert_eq!(p.networks["default"].name, "custom");
    let e = err("services:\n  a:\n    image: x\nnetworks:\n  n:\n    driver: overlay\n");
    assert!(e.contains("networks.n.driver"), "{e}");
}

#[test]
fn depends_on_list_map_conditions() {
    let p = one("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on:\n      c:\n        condition: service_healthy\n      d:\n        condition: service_completed_successfully\n        restart: true\n  c:\n    image: x\n  d:\n    image: x\n").unwrap();
    assert_eq!(
        p.services["a"].depends_on["b"].condition,
        Condition::ServiceStarted
    );
    assert_eq!(
        p.services["b"].depends_on["c"].condition,
        Condition::ServiceHealthy
    );
    assert_eq!(
        p.services["b"].depends_on["d"].condition,
        Condition::ServiceCompletedSuccessfully
    );
    let order = p.start_order(&["a".into()]).unwrap();
    assert_eq!(order, vec!["c", "d", "b", "a"]);
    assert_eq!(p.start_order(&["zz".into()]).unwrap_err(), "zz");
    let e = err("services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: whenever}\n  b: {image: x}\n");
    assert!(e.contains("unknown condition"), "{e}");
    let e = err("services:\n  a:\n    image: x\n    depends_on: [ghost]\n");
    assert!(
        e.contains(":4: services.a.depends_on: depends on undefined service \"ghost\""),
        "{e}"
    );
}

#[test]
fn depends_on_cycle() {
    let e = err("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [c]\n  c:\n    image: x\n    depends_on: [a]\n");
    assert!(e.contains("dependency cycle: a -> b -> c -> a"), "{e}");
    assert!(e.contains("compose.yaml:4:"), "{e}");
    let e = err("services:\n  a:\n    image: x\n    depends_on: [a]\n");
    assert!(e.contains("cycle: a -> a"), "{e}");
}

#[test]
fn optional_dependency_may_be_missing() {
    let p = one("services:\n  a:\n    image: x\n    depends_on:\n      b: {required: false}\n")
        .unwrap();
    assert!(p.start_order(&[]).unwrap() == vec!["a"]);
}

#[test]
fn healthcheck_forms() {
    let p = one("services:\n  a:\n    image: x\n    healthcheck:\n      test: wget -q localhost\n      interval: 2s\n      timeout: 1s\n      retries: 5\n      start_period: 1m\n  b:\n    image: x\n    healthcheck:\n      test: [CMD, true]\n  c:\n    image: x\n    healthcheck: {disable: true}\n").unwrap();
    let h = p.services["a"].healthcheck.as_ref().unwrap();
    assert_eq!(h.test, vec!["CMD-SHELL", "wget -q localhost"]);
    assert_eq!(h.interval, Some(std::time::Duration::from_secs(2)));
    assert_eq!(h.retries, Some(5));
    assert_eq!(h.start_period, Some(std::time::Duration::from_secs(60)));
    assert_eq!(
        p.services["b"].healthcheck.as_ref().unwrap().test,
        vec!["CMD", "true"]
    );
    assert!(p.services["c"].healthcheck.as_ref().unwrap().disable);
    let e = err("services:\n  a:\n    image: x\n    healthcheck:\n      test: [RUN, x]\n");
    assert!(e.contains("CMD, CMD-SHELL or NONE"), "{e}");
}

#[test]
fn scalar_service_keys() {
    let p = one("services:\n  a:\n    image: x\n    restart: on-failure:3\n    user: \"1000:1000\"\n    working_dir: /app\n    hostname: h1\n    labels: {team: core}\n    tmpfs: /run\n    read_only: true\n    init: true\n    stop_signal: SIGINT\n    stop_grace_period: 1m30s\n    container_name: fixed\n    deploy:\n      resources:\n        limits: {memory: 64m, cpus: \"0.5\", pids: 100}\n").unwrap();
    let a = &p.services["a"];
    assert_eq!(a.restart, Restart::OnFailure(Some(3)));
    assert_eq!(a.user.as_deref(), Some("1000:1000"));
    assert_eq!(a.working_dir.as_deref(), Some("/app"));
    assert_eq!(a.hostname.as_deref(), Some("h1"));
    assert_eq!(a.labels["team"], "core");
    assert_eq!(a.tmpfs, vec!["/run"]);
    assert!(a.read_only && a.init);
    assert_eq!(a.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(
        a.stop_grace_period,
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(a.limits.memory, Some(64 << 20));
    assert_eq!(a.limits.cpus, Some(0.5));
    assert_eq!(a.limits.pids, Some(100));
    assert_eq!(p.container_name(a), "fixed");
}

#[test]
fn profiles_disable_services() {
    let d = tempfile::tempdir().unwrap();
    let files = [(
        "compose.yaml",
        "services:\n  a:\n    image: x\n  dbg:\n    image: x\n    profiles: [debug]\n",
    )];
    let p = project_in(d.path(), &files, Options::default()).unwrap();
    assert!(p.services.contains_key("a") && !p.services.contains_key("dbg"));
    assert!(p.disabled.contains_key("dbg"));
    let p = project_in(
        d.path(),
        &files,
        Options {
            profiles: vec!["debug".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(p.services.contains_key("dbg"));
    let p = project_in(
        d.path(),
        &files,
        Options {
            env: Vars::from([("COMPOSE_PROFILES".to_string(), "debug".to_string())]),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(p.services.contains_key("dbg"));
    let e = err("services:\n  a:\n    image: x\n    depends_on: [dbg]\n  dbg:\n    image: x\n    profiles: [debug]\n");
    assert!(e.contains("profiles are not enabled"), "{e}");
}

#[test]
fn several_files_merge_in_order() {
    let d = tempfile::tempdir().unwrap();
    let p = project_in(
        d.path(),
        &[
            (
                "base.yaml",
                "services:\n  a:\n    image: x\n    command: [one, two]\n    environment: [A=1, B=1]\n    ports: [\"80:80\"]\n    volumes: [\"./a:/data\", \"./c:/c\"]\n    labels: {l1: a}\n",
            ),
            (
                "over.yaml",
                "services:\n  a:\n    image: y\n    command: [three]\n    environment: {B: 2, C: 3}\n    ports: [\"81:81\", \"80:80\"]\n    volumes: [\"./b:/data\"]\n    labels: [l2=b]\n  b:\n    image: z\n",
            ),
        ],
        Options {
            files: vec!["base.yaml".into(), "over.yaml".into()],
            project_name: Some("p".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let a = &p.services["a"];
    assert_eq!(a.image.as_deref(), Some("y"));
    assert_eq!(a.command.as_ref().unwrap(), &vec!["three".to_string()]);
    assert_eq!(a.environment["A"].as_deref(), Some("1"));
    assert_eq!(a.environment["B"].as_deref(), Some("2"));
    assert_eq!(a.environment["C"].as_deref(), Some("3"));
    assert_eq!(a.ports.len(), 2);
    assert_eq!(a.volumes.len(), 2);
    assert_eq!(
        a.volumes[0].source,
        MountSource::Bind {
            source: d.path().join("b")
        }
    );
    assert_eq!(a.labels.len(), 2);
    assert!(p.services.contains_key("b"));
    assert_eq!(p.config_files.len(), 2);
}

#[test]
fn errors_name_the_file_they_come_from() {
    let d = tempfile::tempdir().unwrap();
    let e = project_in(
        d.path(),
        &[
            ("one.yaml", "services:\n  a:\n    image: x\n"),
            ("two.yaml", "services:\n  a:\n    bogus: 1\n"),
        ],
        Options {
            files: vec!["one.yaml".into(), "two.yaml".into()],
            project_name: Some("p".into()),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("two.yaml:3: services.a.bogus"), "{e}");
}

#[test]
fn compose_file_env_var() {
    let d = tempfile::tempdir().unwrap();
    let p = project_in(
        d.path(),
        &[("custom.yml", "services: {a: {image: x}}")],
        Options {
            env: Vars::from([("COMPOSE_FILE".to_string(), "custom.yml".to_string())]),
            project_name: Some("p".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(p.services.contains_key("a"));
}

#[test]
fn labels_and_hash() {
    let p = one(
        "services:\n  a:\n    image: x\n    labels: [mine=1]\nvolumes:\n  v:\nnetworks:\n  n:\n",
    )
    .unwrap();
    let a = &p.services["a"];
    let l = p.service_labels(a, false);
    assert_eq!(l[LABEL_PROJECT], "proj");
    assert_eq!(l[LABEL_SERVICE], "a");
    assert_eq!(l[LABEL_ONEOFF], "False");
    assert_eq!(l["mine"], "1");
    assert_eq!(l[LABEL_CONFIG_HASH].len(), 64);
    assert_eq!(p.network_labels("n")[LABEL_NETWORK], "n");
    assert_eq!(p.volume_labels("v")[LABEL_VOLUME], "v");
    assert_eq!(p.volumes["v"].name, "proj_v");
    let p2 = one("services:\n  a:\n    image: x\n    labels: [mine=1]\n    environment: [A=1]\nvolumes:\n  v:\nnetworks:\n  n:\n").unwrap();
    assert_ne!(p.config_hash(a), p2.config_hash(&p2.services["a"]));
    let p3 = one(
        "services:\n  a:\n    labels: [mine=1]\n    image: x\nvolumes:\n  v:\nnetworks:\n  n:\n",
    )
    .unwrap();
    assert_eq!(p.config_hash(a), p3.config_hash(&p3.services["a"]));
}

#[test]
fn config_yaml_round_trips() {
    let text = "services:\n  web:\n    image: \"busybox:1\"\n    command: [\"sh\", \"-c\", \"echo a: b\"]\n    environment: {A: \"true\", B: \"\"}\n    ports: [\"8080:80\"]\n    depends_on: {db: {condition: service_healthy}}\n    healthcheck: {test: [CMD, \"true\"], interval: 1s}\n  db:\n    image: busybox\n    volumes: [\"data:/data\"]\nvolumes:\n  data:\n";
    let p = one(text).unwrap();
    let yaml = p.to_yaml();
    assert!(yaml.contains("name: proj"), "{yaml}");
    assert!(yaml.contains("proj_default"), "{yaml}");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("compose.yaml"), &yaml).unwrap();
    let e = load(&Options {
        cwd: d.path().into(),
        ..Default::default()
    });
    // The printed form is the resolved model, not the input schema; it must at least be YAML.
    let parsed = crate::yaml::parse("printed", &yaml);
    assert!(parsed.is_ok(), "{yaml}");
    drop(e);
}

/// Random bytes and random mutations of a valid file never panic the loader.
#[test]
fn fuzz_no_panic() {
    use rand::{Rng, SeedableRng};
    let seed_text = "name: x\nservices:\n  web:\n    build: ./web\n    ports: [\"8080:80\", {target: 80}]\n    environment: {A: ${A:-1}}\n    depends_on: {db: {condition: service_healthy}}\n    volumes: [\"data:/d\", {type: bind, source: ., target: /s}]\n    networks: {n: {aliases: [w]}}\n    healthcheck: {test: [CMD, x], interval: 1s}\n    deploy: {resources: {limits: {memory: 1m}}}\n  db: {image: y, command: \"a 'b c'\"}\nvolumes: {data: }\nnetworks: {n: }\nx-a: &a [1, *a]\n";
    let alphabet: Vec<char> = "ab:-{}[]'\"$ \n\t#&*!|>%@,?~\\01.".chars().collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let d = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        let mut s: Vec<char> = seed_text.chars().collect();
        if i % 3 == 0 {
            s = (0..rng.random_range(0..200))
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
        } else {
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..s.len());
                match rng.random_range(0..3) {
                    0 => {
                        s.remove(at);
                    }
                    1 => s.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                    _ => s[at] = alphabet[rng.random_range(0..alphabet.len())],
                }
            }
        }
        let text: String = s.into_iter().collect();
        std::fs::write(d.path().join("compose.yaml"), &text).unwrap();
        let r = std::panic::catch_unwind(|| {
            let _ = load(&Options {
                cwd: d.path().into(),
                project_name: Some("f".into()),
                ..Default::default()
            });
        });
        assert!(r.is_ok(), "panic on input:\n{text}");
    }
}
