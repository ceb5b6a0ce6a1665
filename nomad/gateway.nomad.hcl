# The gateway of a model: `caravan gateway --model M`, the HTTP front clients call (POST /predict, POST /feedback,
# /health, /metrics). Per request it picks the unit's arm of the experiment (caravan/<env>/experiments/<model>,
# followed live), calls a healthy worker of that arm over gRPC (nomad/worker.nomad.hcl; found in Consul's health
# API: service caravan-<env>-worker, tags model=<model> and arm=<arm>, passing) and shares its reward counters
# with the other gateways under caravan/<env>/experiments/<model>/stats/<allocation id>.
# The gateway's own releases go out as a canary (like serving): an operator promotes it, staging auto-promotes.
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
variable "gateway_count" {
  type    = number
  default = 2
}

variable "unit" {
  type        = string
  default     = "user_id"
  description = "The request field a user sticks to an arm by (caravan gateway --unit)."
}

variable "update_s" {
  type        = string # a task argument: Nomad passes args as strings
  default     = "60"
  description = "Seconds between Thompson-sampling weight updates (caravan gateway --update-s)."
}

variable "namespace" {
  type        = string
  default     = "default"
  description = "Nomad namespace: caravan in production, caravan-staging in staging."
}
variable "environment" {
  type        = string
  default     = "dev"
  description = "The environment (production, staging...): the Vault role caravan-<env>-serving, secret/data/caravan/<env>/, the services caravan-<env>-gateway and caravan-<env>-worker, the experiment caravan/<env>/experiments/<model>. caravan publish sets the one in effect."
}

variable "consul_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:8500"
  description = "Consul HTTP address as seen from the task (the agent on the task's node). With TLS: https://$${attr.unique.network.ip-address}:8501; the CA comes from the consul-ca.pem template below."
}
variable "auto_promote" {
  type        = bool
  default     = false
  description = "Promote the canary as soon as it is healthy. Staging sets true; production keeps false: an operator promotes (nomad deployment promote)."
}

variable "cpu" {
  type    = number
  default = 1000
}

variable "memory" {
  type    = number
  default = 512
}

job "gateway" {
  type        = "service"
  namespace   = var.namespace
  datacenters = var.datacenters

  update {
    max_parallel      = 1
    canary            = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    health_check      = "checks"
    auto_revert       = true
    auto_promote      = var.auto_promote
  }

  group "gateway" {
    count = var.gateway_count

    spread {
      attribute = "${node.unique.id}"
      weight    = 100
    }

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name        = "caravan-${var.environment}-gateway"
      port        = "http"
      provider    = "consul"
      tags        = ["caravan", "model=${var.model}", "env-${var.environment}"]
      canary_tags = ["caravan", "model=${var.model}", "env-${var.environment}", "canary"]

      # Readiness, for Consul's routing only (503 while no worker of any arm answers).
      check {
        name      = "ready"
        type      = "http"
        path      = "/health"
        interval  = "10s"
        timeout   = "2s"
        on_update = "ignore"
      }

      # Liveness, what deployments wait for: the process answers HTTP.
      check {
        name      = "alive"
        type      = "http"
        path      = "/metrics"
        interval  = "10s"
        timeout   = "2s"
        on_update = "require_healthy"
      }
    }

    task "gateway" {
      driver = "docker"

      # The Consul workload identity the CA template renders with (Nomad 1.10+: only with this block).
      consul {}

      # Deregistered from Consul first, stopped 5 s later: clients stop picking this gateway before it goes.
      shutdown_delay = "5s"

      # SIGTERM drains the event log (--log-drain-s 20) before exit; what is not shipped by then stays spooled on
      # the allocation's disk. Within the client's default max_kill_timeout (30 s).
      kill_timeout = "25s"

      config {
        image   = var.image
        command = "caravan"
        args    = ["gateway", "--model", var.model, "--port", "8080", "--unit", var.unit, "--update-s", var.update_s,
                 "--log-drain-s", "20"]
        ports   = ["http"]
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

      # The Consul token (experiment watch, reward counters, the workers' health) and the key that signs request
      # ids (so /feedback cannot be forged): both from the serving secret, rendered into the environment only.
      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/${var.environment}/serving" -}}
          CONSUL_HTTP_TOKEN={{ .Data.data.consul_token }}
          CARAVAN_SECRET_GATEWAY_SIGNING_KEY={{ .Data.data.gateway_signing_key }}
          {{ end -}}
        EOT
        destination          = "secrets/gateway.env"
        env                  = true
        error_on_missing_key = true
        splay                = "60s"
      }

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
