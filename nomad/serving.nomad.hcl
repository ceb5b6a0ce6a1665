# The model server: `caravan serve --model ranker`, behind Consul service discovery (caravan-<env>-<model>).
# The process follows the model pointer (caravan/<env>/models/<model>/current) itself, with Consul blocking
# queries, and swaps models in memory: a new model never needs a new allocation.
# Two checks: Consul routes traffic by readiness (/health: 503 until a model is loaded), deployments judge an
# allocation by liveness (/metrics: 200 once the process serves), so the first deployment in a new environment,
# before any promotion, succeeds (and auto_revert gets a stable version) instead of failing on a 503.
variable "image" {
  type        = string
  default     = "caravan:dev"
  description = "The project image; caravan publish sets <repository>:<release tag>."
}

variable "release" {
  type        = string
  default     = "dev"
  description = "The release tag; caravan publish sets it, and /health reports it (CI waits for it in staging)."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "model" {
  type    = string
  default = "ranker"
}

variable "count" {
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
  description = "The environment (production, staging...): the Vault role caravan-<env>-serving, secret/data/caravan/<env>/, the service caravan-<env>-<model>, the pointer caravan/<env>/models/<model>/current. caravan publish sets the one in effect (CARAVAN_ENVIRONMENT, else derived from the namespace)."
}

variable "consul_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:8500"
  description = "Consul HTTP address as seen from the task (default: the agent on the task's node, which must listen on the node's address, not only 127.0.0.1). With TLS: https://$${attr.unique.network.ip-address}:8501; the CA comes from the consul-ca.pem template below."
}

variable "auto_promote" {
  type        = bool
  default     = false
  description = "Promote the canary as soon as it is healthy. Staging sets true (caravan publish --var auto_promote=true) so its tests reach the new version; production keeps false: an operator promotes (nomad deployment promote)."
}

variable "cpu" {
  type    = number
  default = 1000
}

variable "memory" {
  type    = number
  default = 1024
}

job "serving" {
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

  group "server" {
    count = var.count

    # One server per host where the cluster allows it: a host going down takes one replica, not all.
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
      name        = "caravan-${var.environment}-${var.model}"
      port        = "http"
      provider    = "consul"
      tags        = ["caravan", "model-${var.model}", "env-${var.environment}"]
      canary_tags = ["caravan", "model-${var.model}", "env-${var.environment}", "canary"]

      # Readiness, for Consul's routing only: deployments ignore it (on_update), so a server without a model
      # yet (503) does not fail a deployment.
      check {
        name      = "ready"
        type      = "http"
        path      = "/health"
        interval  = "10s"
        timeout   = "2s"
        on_update = "ignore"
      }

      # Liveness, what deployments wait for: the process answers HTTP (/metrics is 200 with or without a model).
      check {
        name      = "alive"
        type      = "http"
        path      = "/metrics"
        interval  = "10s"
        timeout   = "2s"
        on_update = "require_healthy"
      }
    }

    task "serve" {
      driver = "docker"

      # The Consul workload identity the pointer and CA templates render with: since Nomad 1.10 a task gets
      # one only with this block (job_endpoint_hook_implicit_identities.go).
      consul {}

      # Deregistered from Consul first, stopped 5 s later: clients stop picking this server before it goes.
      shutdown_delay = "5s"

      # SIGTERM drains the event log (--log-drain-s 20) before exit; what is not shipped by then stays spooled on
      # the allocation's disk. Within the client's default max_kill_timeout (30 s).
      kill_timeout = "25s"

      config {
        image   = var.image
        command = "caravan"
        args    = ["serve", "--model", var.model, "--port", "8080", "--log-drain-s", "20"]
        ports   = ["http"]
      }

      env {
        CARAVAN_POINTER     = "consul"
        CONSUL_HTTP_ADDR    = var.consul_addr
        CARAVAN_RELEASE     = var.release
        CARAVAN_ENVIRONMENT = var.environment
        CONSUL_CACERT       = "${NOMAD_SECRETS_DIR}/consul-ca.pem"
      }

      # Renders the pointer for operators (`nomad alloc fs`) and makes the dependency visible.
      # change_mode = "noop": the server reloads the model on its own, so Nomad must never restart
      # (and briefly take down) an allocation just because a new model was promoted.
      # keyOrDefault, not key: a server whose model was never promoted still starts (and reports 503).
      template {
        data        = "{{ keyOrDefault \"caravan/${var.environment}/models/${var.model}/current\" \"{}\" }}"
        destination = "local/current-model.json"
        change_mode = "noop"
      }

      # The server reads secrets only from its environment, rendered by the templates below; they re-render
      # when a secret changes, so a renewed or re-derived Vault token alone needs no restart.
      # env = false: the server reads no Vault itself, so no VAULT_TOKEN in its environment.
      vault {
        role        = "caravan-${var.environment}-serving"
        change_mode = "noop"
        env         = false
      }

      # A rotated secret restarts the task (it reads its environment once); the splay spreads those
      # restarts over a minute so that the servers never all go down together.
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

      # The token the server's pointer watch (Consul blocking queries on caravan/<env>/models/<model>/current) uses.
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

      # Consul's CA for CONSUL_CACERT when Consul serves TLS: published by the operator at
      # caravan/<env>/tls/consul-ca.pem (public data; the template reads it through the Nomad client's own,
      # already verified, Consul connection). Empty without TLS, which caravan treats as no CA file.
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
