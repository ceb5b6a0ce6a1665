# The model server: `caravan serve --model ranker`, behind Consul service discovery.
# The process follows the model pointer (caravan/models/<model>/current) itself, with Consul blocking
# queries, and swaps models in memory: a new model never needs a new allocation.
variable "image" {
  type    = string
  default = "caravan:dev"
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

job "serving" {
  type        = "service"
  datacenters = var.datacenters

  update {
    max_parallel      = 1
    canary            = 1
    min_healthy_time  = "10s"
    healthy_deadline  = "3m"
    progress_deadline = "10m"
    health_check      = "checks"
    auto_revert       = true
    auto_promote      = false
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
        CARAVAN_POINTER = "consul"
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

      resources {
        cpu    = 1000
        memory = 1024
      }
    }
  }
}
