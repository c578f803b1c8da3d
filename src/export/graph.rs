//! A small, readable ONNX graph builder over the prost types of `crate::onnx`.
//!
//! Why it exists: writing `NodeProto`s by hand is noisy and easy to get wrong (a name
//! used twice, a missing opset import, an IR version that does not match the opset).
//! [`GraphBuilder`] hands out unique value names, records which operator domains are
//! used, and always sets the IR version and opset imports. Initializer payloads are
//! kept apart from the protobuf messages as borrowed-or-owned byte slices, so a
//! memory-mapped checkpoint can be written to `model.onnx` without first copying
//! every weight into a `TensorProto` ([`BuiltModel::write_to`] streams the protobuf
//! encoding); a unit test checks that encoding against prost's own.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;

use prost::Message;

use crate::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// The Microsoft contrib-op domain of ONNX Runtime.
pub(crate) const MS_DOMAIN: &str = "com.microsoft";

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Dim {
    Fixed(i64),
    /// A symbolic (dynamic) axis, e.g. `batch`.
    Param(String),
}

/// An attribute value of a node.
#[derive(Debug, Clone)]
pub(crate) enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// The IR version that matches an opset of the default domain (onnx/helper.py's table).
pub(crate) fn ir_version_for_opset(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19..=20 => 9,
        21..=22 => 10,
        _ => 11,
    }
}

struct Initializer<'a> {
    proto: TensorProto,
    data: Cow<'a, [u8]>,
}

/// Builds one graph. `'a` is the lifetime of borrowed initializer payloads.
pub(crate) struct GraphBuilder<'a> {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<Initializer<'a>>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    used: HashSet<String>,
    domains: BTreeSet<String>,
    /// Shape constants by (base name, values), see [`GraphBuilder::shape`].
    shapes: HashMap<(String, Vec<i64>), String>,
}

/// A finished model: the protobuf messages plus the initializer payloads.
pub(crate) struct BuiltModel<'a> {
    /// The model with `graph: None`; the graph is kept apart in `graph`.
    model: ModelProto,
    /// The graph without initializers; those are in `initializers`.
    graph: GraphProto,
    initializers: Vec<Initializer<'a>>,
}

fn value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v),
                Dim::Param(p) => dimension::Value::DimParam(p.clone()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match value {
        Attr::Int(v) => {
            a.r#type = Some(AttributeType::Int as i32);
            a.i = Some(*v);
        }
        Attr::Ints(v) => {
            a.r#type = Some(AttributeType::Ints as i32);
            a.ints = v.clone();
        }
        Attr::Float(v) => {
            a.r#type = Some(AttributeType::Float as i32);
            a.f = Some(*v);
        }
    }
    a
}

impl<'a> GraphBuilder<'a> {
    pub(crate) fn new(name: &str) -> Self {
        GraphBuilder {
            name: name.to_string(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            used: HashSet::new(),
            domains: BTreeSet::new(),
            shapes: HashMap::new(),
        }
    }

    /// A value name not used yet, derived from `base` (`base`, `base_1`, ...).
    pub(crate) fn unique(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }

    /// Declare a float32 graph input; returns its (exact) name.
    pub(crate) fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        assert!(
            self.used.insert(name.to_string()),
            "input name {name} reused"
        );
        self.inputs.push(value_info(name, dims));
        name.to_string()
    }

    /// Declare `value` (an existing node output) as a float32 graph output.
    pub(crate) fn output(&mut self, value: &str, dims: &[Dim]) {
        self.outputs.push(value_info(value, dims));
    }

    /// A float32 initializer from little-endian bytes; returns its unique name.
    pub(crate) fn weight(&mut self, name: &str, shape: &[usize], data: Cow<'a, [u8]>) -> String {
        debug_assert_eq!(shape.iter().product::<usize>() * 4, data.len(), "{name}");
        let name = self.unique(name);
        self.initializers.push(Initializer {
            proto: TensorProto {
                dims: shape.iter().map(|&d| d as i64).collect(),
                data_type: Some(DataType::Float as i32),
                name: Some(name.clone()),
                ..Default::default()
            },
            data,
        });
        name
    }

    /// A float32 constant owned by the graph.
    pub(crate) fn const_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> String {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.weight(name, shape, Cow::Owned(bytes))
    }

    /// A 1-D int64 constant (shapes, axes, indices); a 0-D one when `scalar`.
    pub(crate) fn const_i64(&mut self, name: &str, values: &[i64], scalar: bool) -> String {
        let name = self.unique(name);
        let dims = if scalar {
            assert_eq!(values.len(), 1);
            vec![]
        } else {
            vec![values.len() as i64]
        };
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(Initializer {
            proto: TensorProto {
                dims,
                data_type: Some(DataType::Int64 as i32),
                name: Some(name.clone()),
                ..Default::default()
            },
            data: Cow::Owned(bytes),
        });
        name
    }

    /// A 1-D int64 shape constant, made on first use and shared after: the graph holds
    /// only the shapes that some node reads, each once.
    pub(crate) fn shape(&mut self, name: &str, values: &[i64]) -> String {
        let key = (name.to_string(), values.to_vec());
        if let Some(n) = self.shapes.get(&key) {
            return n.clone();
        }
        let n = self.const_i64(name, values, false);
        self.shapes.insert(key, n.clone());
        n
    }

    /// Add a node of the default domain with one output named after `out`.
    pub(crate) fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
        out: &str,
    ) -> String {
        self.op_in("", op_type, inputs, attrs, &[out]).remove(0)
    }

    /// Add a node of `domain` with outputs named after `outs` (unique names returned).
    /// An empty string in `inputs` or `outs` is an omitted optional input or output.
    pub(crate) fn op_in(
        &mut self,
        domain: &str,
        op_type: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
        outs: &[&str],
    ) -> Vec<String> {
        let outputs: Vec<String> = outs
            .iter()
            .map(|o| {
                if o.is_empty() {
                    String::new()
                } else {
                    self.unique(o)
                }
            })
            .collect();
        let node_name = self.unique(&format!("{}/{op_type}", outputs[0]));
        if !domain.is_empty() {
            self.domains.insert(domain.to_string());
        }
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: Some(node_name),
            op_type: Some(op_type.to_string()),
            domain: if domain.is_empty() {
                None
            } else {
                Some(domain.to_string())
            },
            attribute: attrs.iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
        outputs
    }

    /// Finish the model: IR version and opset imports are always set.
    pub(crate) fn finish(
        self,
        opset: i64,
        producer_version: &str,
        metadata: &[(String, String)],
    ) -> BuiltModel<'a> {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }];
        for d in &self.domains {
            opset_import.push(OperatorSetIdProto {
                domain: Some(d.clone()),
                version: Some(1),
            });
        }
        let model = ModelProto {
            ir_version: Some(ir_version_for_opset(opset)),
            opset_import,
            producer_name: Some("vit-batch".into()),
            producer_version: Some(producer_version.into()),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
            ..Default::default()
        };
        let graph = GraphProto {
            node: self.nodes,
            name: Some(self.name),
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        };
        BuiltModel {
            model,
            graph,
            initializers: self.initializers,
        }
    }
}

// Protobuf field numbers used by the streaming writer (see proto/onnx.proto).
const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_RAW_DATA: u32 = 9;

fn len_delimited_header(field: u32, len: usize, out: &mut Vec<u8>) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(len as u64, out);
}

fn header_len(field: u32, len: usize) -> usize {
    prost::encoding::key_len(field) + prost::encoding::encoded_len_varint(len as u64)
}

impl<'a> BuiltModel<'a> {
    /// The whole model as one in-memory `ModelProto` (copies every payload); the
    /// unit test checks the streamed encoding against it.
    #[cfg(test)]
    fn into_model_proto(self) -> ModelProto {
        let mut graph = self.graph;
        graph.initializer = self
            .initializers
            .into_iter()
            .map(|i| {
                let mut t = i.proto;
                t.raw_data = Some(i.data.into_owned());
                t
            })
            .collect();
        let mut model = self.model;
        model.graph = Some(graph);
        model
    }

    /// Write the protobuf encoding of the model, streaming initializer payloads.
    ///
    /// Protobuf parsers accept fields in any order, so the graph is written as its
    /// small fields followed by one length-delimited `initializer` per payload, each
    /// being the tensor's small fields followed by its `raw_data`. The bytes equal a
    /// valid `ModelProto` encoding; no copy of the weights is made.
    pub(crate) fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let tensor_heads: Vec<Vec<u8>> = self
            .initializers
            .iter()
            .map(|i| {
                let mut v = i.proto.encode_to_vec();
                len_delimited_header(TENSOR_RAW_DATA, i.data.len(), &mut v);
                v
            })
            .collect();
        let tensor_lens: Vec<usize> = tensor_heads
            .iter()
            .zip(&self.initializers)
            .map(|(h, i)| h.len() + i.data.len())
            .collect();
        let graph_small = self.graph.encode_to_vec();
        let graph_len = graph_small.len()
            + tensor_lens
                .iter()
                .map(|&l| header_len(GRAPH_INITIALIZER, l) + l)
                .sum::<usize>();
        let mut head = self.model.encode_to_vec();
        len_delimited_header(MODEL_GRAPH, graph_len, &mut head);
        head.extend_from_slice(&graph_small);
        w.write_all(&head)?;
        for ((h, i), &len) in tensor_heads
            .iter()
            .zip(&self.initializers)
            .zip(&tensor_lens)
        {
            let mut hdr = Vec::with_capacity(16);
            len_delimited_header(GRAPH_INITIALIZER, len, &mut hdr);
            w.write_all(&hdr)?;
            w.write_all(h)?;
            w.write_all(&i.data)?;
        }
        Ok(())
    }

    /// The encoded model in memory.
    #[cfg(test)]
    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_bytes_decode_to_the_same_model() {
        let mut g = GraphBuilder::new("g");
        let x = g.input("x", &[Dim::Param("batch".into()), Dim::Fixed(3)]);
        let w = g.const_f32("w", &[3], &[1.0, 2.0, 3.0]);
        let s = g.const_i64("shape", &[-1, 3], false);
        let y = g.op("Mul", &[&x, &w], &[], "y");
        let z = g.op("Reshape", &[&y, &s], &[], "y");
        assert_ne!(y, z, "names are unique");
        g.output(&z, &[Dim::Param("batch".into()), Dim::Fixed(3)]);
        let m = g.finish(18, "0.0.0", &[("k".into(), "v".into())]);
        let bytes = m.to_bytes();
        let decoded = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, m.into_model_proto());
        assert_eq!(decoded.ir_version, Some(8));
        let graph = decoded.graph.unwrap();
        assert_eq!(graph.initializer.len(), 2);
        assert_eq!(graph.initializer[0].raw_data.as_ref().unwrap().len(), 12);
    }
}
