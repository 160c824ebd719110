//! The two building blocks the ResNets need, initialised and named as torchvision does, so
//! a saved VarStore is a valid torchvision `state_dict` (including `num_batches_tracked`).

use tch::nn::{self, Init, ModuleT};
use tch::{Kind, Tensor};

/// Bias-free convolution with torchvision's init: Kaiming normal, fan-out, ReLU gain.
pub fn conv2d(p: nn::Path, c_in: i64, c_out: i64, ksize: i64, stride: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding: ksize / 2,
        bias: false,
        ws_init: Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, ksize, cfg)
}

/// BatchNorm (1d or 2d by input rank) with PyTorch's momentum 0.1 and eps 1e-5, weight 1,
/// bias 0, and a `num_batches_tracked` counter so PyTorch loads the weights strictly.
#[derive(Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    eps: f64,
}

impl BatchNorm {
    pub fn new(p: nn::Path, channels: i64) -> BatchNorm {
        let weight = p.var("weight", &[channels], Init::Const(1.));
        Self::with_weight(p, channels, weight)
    }

    /// A BatchNorm whose scale is pinned to 1 and never trained (insightface's `features`):
    /// the weight is saved and loaded, but no optimiser group picks it up.
    pub fn fixed_scale(p: nn::Path, channels: i64) -> BatchNorm {
        let weight = p.ones_no_train("weight", &[channels]);
        Self::with_weight(p, channels, weight)
    }

    fn with_weight(p: nn::Path, channels: i64, weight: Tensor) -> BatchNorm {
        let tracked = Tensor::zeros([], (Kind::Int64, p.device()));
        BatchNorm {
            weight,
            bias: p.var("bias", &[channels], Init::Const(0.)),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            num_batches_tracked: p.add("num_batches_tracked", tracked, false),
            eps: 1e-5,
        }
    }

    /// Another epsilon (arcface_torch's ViT `feature` head uses 2e-5).
    pub fn with_eps(self, eps: f64) -> BatchNorm {
        BatchNorm { eps, ..self }
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let mut n = self.num_batches_tracked.shallow_clone();
                let _ = n.g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            0.1,
            self.eps,
            true,
        )
    }
}
