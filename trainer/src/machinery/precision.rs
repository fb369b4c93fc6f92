//! Half-precision copies of a module for the model files (`--weights-dtype f16`).

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::DType;

/// The module with every weight of two or more dimensions stored in half precision (biases
/// and batch-norm vectors stay f32).
pub fn to_f16<M: Module>(model: M) -> M {
    struct Half;
    impl burn::module::ModuleMapper for Half {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            if D >= 2 {
                param.map(|t| t.cast(DType::F16))
            } else {
                param
            }
        }
    }
    model.map(&mut Half)
}
