# The model server: `caravan serve --model ranker`, behind Consul service discovery.
# The process follows the model pointer (caravan/models/<model>/current) itself, with Consul blocking
# queries, and swaps models in memory: a new model never needs a new allocation.
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

variable "vault_role" {
  type        = string
  default     = "caravan-serving"
  description = "Vault role (workload identity): reads secret/data/caravan/storage and secret/data/caravan/serving."
}

variable "consul_addr" {
  type        = string
  default     = "http://$${attr.unique.network.ip-address}:8500"
  description = "Consul HTTP address as seen from the task (default: the agent on the task's node)."
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

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "caravan-${var.model}"
      port     = "http"
      provider = "consul"
      tags     = ["caravan", "model-${var.model}"]

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "serve" {
      driver = "docker"

      config {
        image   = var.image
        command = "caravan"
        args    = ["serve", "--model", var.model, "--port", "8080"]
        ports   = ["http"]
      }

      env {
        CARAVAN_POINTER  = "consul"
        CONSUL_HTTP_ADDR = var.consul_addr
        CARAVAN_RELEASE  = var.release
      }

      # Renders the pointer for operators (`nomad alloc fs`) and makes the dependency visible.
      # change_mode = "noop": the server reloads the model on its own, so Nomad must never restart
      # (and briefly take down) an allocation just because a new model was promoted.
      # keyOrDefault, not key: a server whose model was never promoted still starts (and reports 503).
      template {
        data        = "{{ keyOrDefault \"caravan/models/${var.model}/current\" \"{}\" }}"
        destination = "local/current-model.json"
        change_mode = "noop"
      }

      # The server reads secrets only from its environment, rendered by the templates below; they re-render
      # when a secret changes, so a renewed or re-derived Vault token alone needs no restart.
      vault {
        role        = var.vault_role
        change_mode = "noop"
      }

      # A rotated secret restarts the task (it reads its environment once); the splay spreads those
      # restarts over a minute so that the servers never all go down together.
      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/storage" -}}
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

      # The token the server's pointer watch (Consul blocking queries on caravan/models/<model>/current) uses.
      template {
        data                 = <<-EOT
          {{ with secret "secret/data/caravan/serving" -}}
          CONSUL_HTTP_TOKEN={{ .Data.data.consul_token }}
          {{ end -}}
        EOT
        destination          = "secrets/consul.env"
        env                  = true
        error_on_missing_key = true
        splay                = "60s"
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
