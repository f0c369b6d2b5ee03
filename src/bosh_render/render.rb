# Renders BOSH job templates with ERB, giving them the context a BOSH director gives them:
# p / if_p over the job's resolved properties, spec.*, link / if_link.
# Input: one JSON file (argv[0]) written by bosh_render (Python): templates, properties, spec, links.
# Errors are printed as "error: <template>: <message>" on stderr with exit status 1.
require "erb"
require "json"
require "fileutils"
require "yaml"

module BoshRender
  class RenderError < StandardError; end

  # Looks up a dotted property name ("a.b.c") in nested hashes; nil when any part is absent.
  def self.lookup(hash, name)
    name.to_s.split(".").reduce(hash) do |node, key|
      return nil unless node.is_a?(Hash) && node.key?(key)
      node[key]
    end
  end

  def self.missing_message(names, where)
    list = names.map { |n| "'#{n}'" }.join(", ")
    noun = names.length == 1 ? "property" : "any of the properties"
    "Can't find #{noun} #{list}#{where}"
  end

  # Read-only struct over a hash: spec.ip, spec.job.name; unknown names give nil like OpenStruct.
  class Struct
    def initialize(hash)
      @hash = hash
    end

    def [](key)
      wrap(@hash[key.to_s])
    end

    def to_h
      @hash
    end

    def respond_to_missing?(_name, _include_private = false)
      true
    end

    def method_missing(name, *args)
      raise NoMethodError, "undefined method '#{name}' for spec" unless args.empty?
      wrap(@hash[name.to_s])
    end

    private

    def wrap(value)
      value.is_a?(Hash) ? Struct.new(value) : value
    end
  end

  # What if_p / if_link return: `.else { }` runs only when the condition did not hold.
  class ActiveElseBlock
    def else; end

    def else_if_p(*_names); end
  end

  class InactiveElseBlock
    def initialize(context)
      @context = context
    end

    def else
      yield
    end

    def else_if_p(*names, &block)
      @context.if_p(*names, &block)
    end
  end

  module PropertyAccess
    def p(*args)
      names = Array(args[0])
      names.each do |name|
        value = BoshRender.lookup(property_hash, name)
        return value unless value.nil?
      end
      return args[1] if args.length == 2
      raise RenderError, BoshRender.missing_message(names, property_scope)
    end

    def if_p(*names)
      values = names.map { |name| BoshRender.lookup(property_hash, name) }
      return InactiveElseBlock.new(self) if values.any?(&:nil?)
      yield(*values)
      ActiveElseBlock.new
    end
  end

  class LinkInstance
    attr_reader :name, :index, :id, :az, :address, :bootstrap

    def initialize(hash)
      @name = hash["name"]
      @index = hash["index"]
      @id = hash["id"]
      @az = hash["az"]
      @address = hash["address"]
      @bootstrap = hash["bootstrap"]
    end
  end

  class Link
    include PropertyAccess
    attr_reader :name, :instances, :address, :properties

    def initialize(name, hash)
      @name = name
      @properties = hash["properties"] || {}
      @instances = (hash["instances"] || []).map { |i| LinkInstance.new(i) }
      @address = hash["address"]
    end

    def property_hash
      @properties
    end

    def property_scope
      " in link '#{@name}'"
    end
  end

  class Context
    include PropertyAccess
    attr_reader :spec, :name, :index

    def initialize(data)
      @properties = data["properties"]
      @spec = Struct.new(data["spec"])
      @links = data["links"]
      @name = data["spec"].dig("job", "name")
      @index = data["spec"]["index"]
    end

    def property_hash
      @properties
    end

    def property_scope
      ""
    end

    def link(name)
      raise RenderError, "Can't find link '#{name}'" unless @links.key?(name)
      Link.new(name, @links[name])
    end

    def if_link(name)
      return InactiveElseBlock.new(self) unless @links.key?(name)
      yield link(name)
      ActiveElseBlock.new
    end

    def get_binding
      binding
    end
  end

  def self.main(input_path)
    data = JSON.parse(File.read(input_path))
    data["templates"].each do |template|
      begin
        erb = ERB.new(File.read(template["source"]), trim_mode: "-")
        erb.filename = template["name"]
        result = erb.result(Context.new(data).get_binding)
      rescue RenderError => e
        warn "error: #{template['name']}: #{e.message}"
        exit 1
      rescue StandardError, ScriptError => e
        if e.instance_of?(RuntimeError) # a template's own `raise "message"`: shown as written
          warn "error: #{template['name']}: #{e.message}"
          exit 1
        end
        location = e.backtrace&.find { |line| line.start_with?(template["name"]) }
        warn "error: #{template['name']}: #{e.class}: #{e.message}#{location ? " (at #{location})" : ''}"
        exit 1
      end
      FileUtils.mkdir_p(File.dirname(template["destination"]))
      File.write(template["destination"], result)
    end
  end
end

BoshRender.main(ARGV.fetch(0)) if $PROGRAM_NAME == __FILE__
