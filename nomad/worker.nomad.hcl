# Workers of an experiment: `caravan worker --model M --arm NAME`, one model version each, behind gRPC
# (caravan.v1.Predictor/Predict) for the gateways (nomad/gateway.nomad.hcl), which find them in Consul: service
# caravan-<env>-worker, tags model=<model> and arm=<arm>, health passing.
# Two groups, one per arm of the experiment (arm names and counts are variables; a count of 0 stops an arm's
# workers). Each worker follows its arm in the experiment document (caravan/<env>/experiments/<model>) with Consul
# blocking queries and swaps in a new artifact in memory, after the probe process has loaded it: a new artifact
# never needs a new allocation. Checks as for serving: Consul routes by readiness (/health: 503 until the arm's
# model is loaded), deployments judge by liveness (/metrics: 200 once the process answers).
variable "image" {
  type        = string
  default     = "caravan:dev"
  description = "The project image; caravan publish sets <repository>:<release tag>."
}

variable "release" {
  type        = string
  default     = "dev"
  description = "The release tag; caravan publish sets it, and /health reports it."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "model" {
  type    = string
  default = "ranker"
}

variable "arm_a" {
  type        = string
  default     = "control"
  description = "The arm the first group serves (an arm name of the experiment: caravan experiment start --arm NAME=...)."
}

variable "arm_a_count" {
  type    = number
  default = 2
}

variable "arm_b" {
  type        = string
  default     = "challenger"
  description = "The arm the second group serves."
}

variable "arm_b_count" {
  type    = number
  default = 2
}

variable "namespace" {
  type        = string
  default     = "default"
  description = "Nomad namespace: caravan in production, caravan-staging in staging."
}

variable "environment" {
  type        = string
  default     = "dev"
  description = "The environment (production, staging...): the Vault role caravan-<env>-serving, secret/data/caravan/<env>/, the service caravan-<env>-worker, the experiment caravan/<env>/experiments/<model>. caravan publish sets the one in effect."
}

variable "consul_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:8500"
  description = "Consul HTTP address as seen from the task (the agent on the task's node). With TLS: https://$${attr.unique.network.ip-address}:8501; the CA comes from the consul-ca.pem template below."
}

variable "cpu" {
  type    = number
  default = 1000
}

variable "memory" {
  type    = number
  default = 1024
}

job "worker" {
  type        = "service"
  namespace   = var.namespace
  datacenters = var.datacenters

  # A worker's own releases roll one allocation at a time; a new model for an arm needs no deployment at all.
  update {
    max_parallel      = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    health_check      = "checks"
    auto_revert       = true
  }

  group "arm-a" {
    count = var.arm_a_count

    spread {
      attribute = "${node.unique.id}"
      weight    = 100
    }

    network {
      port "grpc" {
        to = 9000
      }
      port "http" {
        to = 9001
      }
    }

    service {
      name     = "caravan-${var.environment}-worker"
      port     = "grpc"
      provider = "consul"
      tags     = ["caravan", "model=${var.model}", "arm=${var.arm_a}", "env-${var.environment}"]

      # Readiness, for Consul (and so the gateways) only: a worker whose arm's model is not loaded is not routed to.
      check {
        name      = "ready"
        type      = "http"
        port      = "http"
        path      = "/health"
        interval  = "5s"
        timeout   = "2s"
        on_update = "ignore"
      }

      # Liveness, what deployments wait for.
      check {
        name      = "alive"
        type      = "http"
        port      = "http"
        path      = "/metrics"
        interval  = "10s"
        timeout   = "2s"
        on_update = "require_healthy"
      }
    }

    task "worker" {
      driver = "docker"

      # The Consul workload identity the CA template renders with (Nomad 1.10+: only with this block).
      consul {}

      # Deregistered from Consul first, stopped 5 s later: gateways stop picking this worker before it goes,
      # and the calls in flight finish (the worker drains on SIGTERM).
      shutdown_delay = "5s"

      config {
        image   = var.image
        command = "caravan"
        args    = ["worker", "--model", var.model, "--arm", var.arm_a, "--grpc-port", "9000", "--http-port", "9001"]
        ports   = ["grpc", "http"]
      }

      env {
        CARAVAN_POINTER     = "consul"
        CONSUL_HTTP_ADDR    = var.consul_addr
        CARAVAN_RELEASE     = var.release
        CARAVAN_ENVIRONMENT = var.environment
        CONSUL_CACERT       = "${NOMAD_SECRETS_DIR}/consul-ca.pem"
      }

      # As for serving: no VAULT_TOKEN in the environment, secrets rendered into it, restarts spread out.
      vault {
        role        = "caravan-${var.environment}-serving"
        change_mode = "noop"
        env         = false
      }

      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/storage" -}}
          AWS_ACCESS_KEY_ID={{ .Data.data.aws_access_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .Data.data.aws_secret_access_key }}
          {{ with index .Data.data "webhdfs_token" }}CARAVAN_WEBHDFS_TOKEN={{ . }}{{ end }}
          {{ end -}}
        EOT
        destination          = "secrets/storage.env"
        env                  = true
        error_on_missing_key = true
        splay                = "60s"
      }

      # The token of the worker's watch on the experiment document (Consul blocking queries).
      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/serving" -}}
          CONSUL_HTTP_TOKEN={{ .Data.data.consul_token }}
          {{ end -}}
        EOT
        destination          = "secrets/consul.env"
        env                  = true
        error_on_missing_key = true
        splay                = "60s"
      }

      # Consul's CA for CONSUL_CACERT when Consul serves TLS (caravan/<env>/tls/consul-ca.pem, public data; empty
      # without TLS, which caravan treats as no CA file), as for serving.
      template {
        data        = "{{ keyOrDefault \"caravan/${var.environment}/tls/consul-ca.pem\" \"\" }}"
        destination = "secrets/consul-ca.pem"
        change_mode = "noop"
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }

  group "arm-b" {
    count = var.arm_b_count

    spread {
      attribute = "${node.unique.id}"
      weight    = 100
    }

    network {
      port "grpc" {
        to = 9000
      }
      port "http" {
        to = 9001
      }
    }

    service {
      name     = "caravan-${var.environment}-worker"
      port     = "grpc"
      provider = "consul"
      tags     = ["caravan", "model=${var.model}", "arm=${var.arm_b}", "env-${var.environment}"]

      check {
        name      = "ready"
        type      = "http"
        port      = "http"
        path      = "/health"
        interval  = "5s"
        timeout   = "2s"
        on_update = "ignore"
      }

      check {
        name      = "alive"
        type      = "http"
        port      = "http"
        path      = "/metrics"
        interval  = "10s"
        timeout   = "2s"
        on_update = "require_healthy"
      }
    }

    task "worker" {
      driver = "docker"

      consul {}

      shutdown_delay = "5s"

      config {
        image   = var.image
        command = "caravan"
        args    = ["worker", "--model", var.model, "--arm", var.arm_b, "--grpc-port", "9000", "--http-port", "9001"]
        ports   = ["grpc", "http"]
      }

      env {
        CARAVAN_POINTER     = "consul"
        CONSUL_HTTP_ADDR    = var.consul_addr
        CARAVAN_RELEASE     = var.release
        CARAVAN_ENVIRONMENT = var.environment
        CONSUL_CACERT       = "${NOMAD_SECRETS_DIR}/consul-ca.pem"
      }

      vault {
        role        = "caravan-${var.environment}-serving"
        change_mode = "noop"
        env         = false
      }

      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/storage" -}}
          AWS_ACCESS_KEY_ID={{ .Data.data.aws_access_key_id }}
          AWS_SECRET_ACCESS_KEY={{ .Data.data.aws_secret_access_key }}
          {{ with index .Data.data "webhdfs_token" }}CARAVAN_WEBHDFS_TOKEN={{ . }}{{ end }}
          {{ end -}}
        EOT
        destination          = "secrets/storage.env"
        env                  = true
        error_on_missing_key = true
        splay                = "60s"
      }

      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/serving" -}}
          CONSUL_HTTP_TOKEN={{ .Data.data.consul_token }}
          {{ end -}}
        EOT
        destination          = "secrets/consul.env"
        env                  = true
        error_on_missing_key = true
        splay                = "60s"
      }

      # Consul's CA for CONSUL_CACERT when Consul serves TLS (caravan/<env>/tls/consul-ca.pem, public data; empty
      # without TLS, which caravan treats as no CA file), as for serving.
      template {
        data        = "{{ keyOrDefault \"caravan/${var.environment}/tls/consul-ca.pem\" \"\" }}"
        destination = "secrets/consul-ca.pem"
        change_mode = "noop"
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
