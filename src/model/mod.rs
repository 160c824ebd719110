//! Networks: ResNet backbones (torchvision names), FR/ArcFace, Gender and Age heads.
